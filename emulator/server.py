"""The GoHighLevel emulator HTTP server (aiohttp): auth, Version header, rate limits, faults, spec validation.

`create_app(config)` builds the application; `EmulatorServer` runs it in-process on a free loopback port
(async context manager); `ThreadedEmulator` runs it on its own loop in a thread (usable from sync code);
`run(host, port, config_path)` serves it until interrupted (`apro-sync emulator`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from emulator.errors import _REASONS, error_body
from emulator.config import EmulatorConfig, FaultRule, FaultsConfig, LatencyConfig, load_config
from emulator.faults import FaultPlan
from emulator.oauth import OAuthState, add_routes as add_oauth_routes
from emulator.ratelimit import RateLimiter
from emulator.spec import DEFAULT_SPEC_DIR, SUPPORTED_VERSIONS, V3, Spec, load_spec
from emulator.state import ApiError, Store

Handler = Callable[[web.Request, "Ctx"], Awaitable[web.Response]]
STORE: web.AppKey[Store] = web.AppKey("store", Store)
EMU: web.AppKey["Emulator"] = web.AppKey("emulator", object)  # type: ignore[arg-type]
TRACE_ID: web.RequestKey[str] = web.RequestKey("trace_id", str)
class Ctx:
    """What the middleware established for one API request."""

    def __init__(self, location_id: str, version: str, body: Any) -> None:
        self.location_id = location_id
        self.version = version
        self.body = body

    def ok(self, payload: dict[str, Any]) -> dict[str, Any]:
        # v2 responses spell it `succeded`; v3 fixed the spelling.
        if "succeded" in payload and self.version == V3:
            payload["succeeded"] = payload["succeded"]
        return payload


class Emulator:
    """Mutable runtime: store, limiter, faults, request log. One per application."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.store = Store(config)
        self.limiter = RateLimiter(config.rate_limit)
        self.faults = FaultPlan(config.faults)
        self.log: deque[dict[str, Any]] = deque(maxlen=config.max_request_log)
        spec_dir = config.spec_dir or str(DEFAULT_SPEC_DIR)
        self.specs: dict[str, Spec] = {"v2": load_spec(spec_dir, "2021-07-28"), "v3": load_spec(spec_dir, V3)}
        self.tokens = config.location_by_token()
        self.oauth = OAuthState(config)

    def reset(self) -> None:
        self.store.reset()
        self.oauth.reset()
        self.limiter.reset()
        self.faults.set(self.config.faults)
        self.log.clear()

    def spec_for(self, version: str) -> Spec:
        return self.specs["v3" if version == V3 else "v2"]


# ---------------------------------------------------------------------------------------------------- handlers
async def upsert_contact(request: web.Request, ctx: Ctx) -> web.Response:
    contact, new = request.app[STORE].upsert_contact(ctx.location_id, ctx.body)
    return web.json_response({"new": new, "contact": contact, "traceId": _trace_id(request)})


async def create_contact(request: web.Request, ctx: Ctx) -> web.Response:
    return web.json_response({"contact": request.app[STORE].create_contact(ctx.location_id, ctx.body)}, status=201)


async def get_contact(request: web.Request, ctx: Ctx) -> web.Response:
    store = request.app[STORE]
    return web.json_response(
        {"contact": store.contact_view(store.contact(ctx.location_id, request.match_info["contactId"]))}
    )


async def update_contact(request: web.Request, ctx: Ctx) -> web.Response:
    contact = request.app[STORE].update_contact(ctx.location_id, request.match_info["contactId"], ctx.body)
    return web.json_response(ctx.ok({"succeded": True, "contact": contact}))


async def search_contacts(request: web.Request, ctx: Ctx) -> web.Response:
    return web.json_response(request.app[STORE].search_contacts(ctx.location_id, ctx.body))


async def duplicate_contact(request: web.Request, ctx: Ctx) -> web.Response:
    q = request.query
    found, field = request.app[STORE].duplicate(ctx.location_id, q.get("locationId"), q.get("email"), q.get("number"))
    return web.json_response({"contact": found, "matchingField": field})


async def get_location(request: web.Request, ctx: Ctx) -> web.Response:
    return web.json_response({"location": request.app[STORE].location_view(ctx.location_id,
                                                                          request.match_info["locationId"])})


async def add_tags(request: web.Request, ctx: Ctx) -> web.Response:
    tags = request.app[STORE].add_tags(ctx.location_id, request.match_info["contactId"], ctx.body["tags"])
    return web.json_response({"tags": tags}, status=201)


async def remove_tags(request: web.Request, ctx: Ctx) -> web.Response:
    tags = request.app[STORE].remove_tags(ctx.location_id, request.match_info["contactId"], ctx.body["tags"])
    return web.json_response({"tags": tags})


async def create_note(request: web.Request, ctx: Ctx) -> web.Response:
    note = request.app[STORE].create_note(ctx.location_id, request.match_info["contactId"], ctx.body)
    return web.json_response({"note": note}, status=201)


async def list_notes(request: web.Request, ctx: Ctx) -> web.Response:
    return web.json_response({"notes": request.app[STORE].list_notes(ctx.location_id, request.match_info["contactId"])})


async def enroll(request: web.Request, ctx: Ctx) -> web.Response:
    m = request.match_info
    request.app[STORE].enroll(ctx.location_id, m["contactId"], m["workflowId"], ctx.body or {})
    return web.json_response(ctx.ok({"succeded": True}))


async def unenroll(request: web.Request, ctx: Ctx) -> web.Response:
    m = request.match_info
    request.app[STORE].unenroll(ctx.location_id, m["contactId"], m["workflowId"])
    return web.json_response(ctx.ok({"succeded": True}))


async def list_workflows(request: web.Request, ctx: Ctx) -> web.Response:
    return web.json_response(
        {"workflows": request.app[STORE].list_workflows(ctx.location_id, request.query.get("locationId"))}
    )


async def list_custom_fields(request: web.Request, ctx: Ctx) -> web.Response:
    fields = request.app[STORE].list_custom_fields(
        ctx.location_id, request.match_info["locationId"], request.query.get("model")
    )
    return web.json_response({"customFields": fields})


async def get_custom_field(request: web.Request, ctx: Ctx) -> web.Response:
    m = request.match_info
    return web.json_response(
        {"customField": request.app[STORE].get_custom_field(ctx.location_id, m["locationId"], m["id"])}
    )


async def create_custom_field(request: web.Request, ctx: Ctx) -> web.Response:
    field = request.app[STORE].create_custom_field(ctx.location_id, request.match_info["locationId"], ctx.body)
    return web.json_response({"customField": field}, status=201)


async def list_pipelines(request: web.Request, ctx: Ctx) -> web.Response:
    return web.json_response(
        {"pipelines": request.app[STORE].list_pipelines(ctx.location_id, request.query.get("locationId"))}
    )


async def search_opportunities(request: web.Request, ctx: Ctx) -> web.Response:
    return web.json_response(request.app[STORE].search_opportunities(ctx.location_id, dict(request.query)))


async def get_opportunity(request: web.Request, ctx: Ctx) -> web.Response:
    store = request.app[STORE]
    return web.json_response(
        {"opportunity": store.opportunity_view(store.opportunity(ctx.location_id, request.match_info["id"]))}
    )


async def create_opportunity(request: web.Request, ctx: Ctx) -> web.Response:
    return web.json_response(
        {"opportunity": request.app[STORE].create_opportunity(ctx.location_id, ctx.body)}, status=201
    )


async def update_opportunity(request: web.Request, ctx: Ctx) -> web.Response:
    opp = request.app[STORE].update_opportunity(ctx.location_id, request.match_info["id"], ctx.body)
    return web.json_response({"opportunity": opp})


async def update_opportunity_status(request: web.Request, ctx: Ctx) -> web.Response:
    request.app[STORE].update_opportunity_status(ctx.location_id, request.match_info["id"], ctx.body)
    return web.json_response(ctx.ok({"succeded": True}))


# (method, OpenAPI template, handler). Specific paths come before `{id}` paths: aiohttp matches in order.
ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/contacts/upsert", upsert_contact),
    ("POST", "/contacts/search", search_contacts),
    ("GET", "/contacts/search/duplicate", duplicate_contact),
    ("POST", "/contacts/", create_contact),
    ("GET", "/contacts/{contactId}", get_contact),
    ("PUT", "/contacts/{contactId}", update_contact),
    ("POST", "/contacts/{contactId}/tags", add_tags),
    ("DELETE", "/contacts/{contactId}/tags", remove_tags),
    ("POST", "/contacts/{contactId}/notes", create_note),
    ("GET", "/contacts/{contactId}/notes", list_notes),
    ("POST", "/contacts/{contactId}/workflow/{workflowId}", enroll),
    ("DELETE", "/contacts/{contactId}/workflow/{workflowId}", unenroll),
    ("GET", "/workflows/", list_workflows),
    ("GET", "/locations/{locationId}", get_location),
    ("GET", "/locations/{locationId}/customFields", list_custom_fields),
    ("POST", "/locations/{locationId}/customFields", create_custom_field),
    ("GET", "/locations/{locationId}/customFields/{id}", get_custom_field),
    ("GET", "/opportunities/pipelines", list_pipelines),
    ("GET", "/opportunities/search", search_opportunities),
    ("POST", "/opportunities/", create_opportunity),
    ("GET", "/opportunities/{id}", get_opportunity),
    ("PUT", "/opportunities/{id}", update_opportunity),
    ("PUT", "/opportunities/{id}/status", update_opportunity_status),
]


def _trace_id(request: web.Request) -> str:
    return request.get(TRACE_ID, "")


# ---------------------------------------------------------------------------------------------------- middleware
def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(payload, status=status, headers=headers)


async def _api(request: web.Request, handler: Handler, template: str) -> web.StreamResponse:
    emu: Emulator = request.app[EMU]
    store = emu.store
    # `target`: the request line's path and query as sent (what an access log keeps), to check that no PHI is in it.
    entry: dict[str, Any] = {"method": request.method, "path": template, "target": request.raw_path,
                             "status": None, "locationId": None, "body": None, "query": dict(request.query),
                             "at": time.time()}
    emu.log.append(entry)

    def done(resp: web.StreamResponse) -> web.StreamResponse:
        entry["status"] = resp.status
        store.status_counts[(f"{request.method} {template}", resp.status)] += 1
        return resp

    auth = request.headers.get("Authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    location = emu.tokens.get(token) if token else None
    if location is None and token:  # an OAuth location access token (expired or unknown: 401)
        location = store.locations.get(emu.oauth.location_for(token) or "")
    if location is None:
        return done(_json(401, error_body(401, "Invalid token: access token is invalid")))
    entry["locationId"] = location.id
    version = request.headers.get("Version")
    if not version:
        return done(_json(400, error_body(400, "Version header was not found")))
    if version not in SUPPORTED_VERSIONS:
        return done(_json(400, error_body(400, "Invalid version header")))

    decision = emu.limiter.check(location.id)
    headers = decision.headers
    if not decision.allowed:
        store.rate_limited[location.id] += 1
        if emu.config.rate_limit.retry_after_s is not None:
            headers = {**headers, "Retry-After": str(max(1, round(emu.config.rate_limit.retry_after_s)))}
        return done(_json(429, error_body(429, "Too Many Requests"), headers))
    store.request_counts[(location.id, f"{request.method} {template}")] += 1

    faults = emu.faults.pick(request.method, template, location.id)
    delay = emu.faults.call_delay_ms() + sum(f.latency_ms for f in faults if f.kind == "latency")
    if delay:
        await asyncio.sleep(delay / 1000)
    created_then_422 = False
    for f in faults:
        if f.kind == "latency":
            continue
        store.faults_injected[f"{f.kind}:{f.status}" if f.kind == "status" else f.kind] += 1
        if f.kind == "status":
            h = dict(headers)
            if f.retry_after_s is not None:
                h["Retry-After"] = str(max(1, round(f.retry_after_s)))
            return done(_json(f.status, error_body(f.status, _REASONS.get(f.status, "Error")), h))
        if f.kind == "timeout":
            await asyncio.sleep(f.hold_s)
            entry["status"] = 0
            if request.transport is not None:
                request.transport.close()  # drop without answering, like a gateway timeout upstream
            raise asyncio.CancelledError
        if f.kind == "created_then_422":
            created_then_422 = True

    body: Any = None
    spec_op = emu.spec_for(version).get(request.method, template)
    if request.can_read_body:
        raw = await request.read()
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                return done(_json(400, error_body(400, "Unexpected token in JSON body"), headers))
    if spec_op is not None and spec_op.request_schema is not None:
        if body is None:
            body = {}
        if emu.config.validate_requests:
            errors = spec_op.validate_body(body)
            if errors:
                entry["body"] = body
                return done(_json(422, error_body(422, errors), headers))
    entry["body"] = body
    request[TRACE_ID] = store.ids.new("trace")
    try:
        resp = await handler(request, Ctx(location.id, version, body))
    except ApiError as exc:
        return done(_json(exc.status, error_body(exc.status, exc.message), headers))
    if created_then_422 and resp.status < 300:
        return done(_json(422, error_body(422, ["Unprocessable Entity"]), headers))
    resp.headers.update(headers)
    return done(resp)


@web.middleware
async def _not_found(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _json(404, error_body(404, f"Cannot {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed:
        return _json(404, error_body(404, f"Cannot {request.method} {request.path}"))


# ---------------------------------------------------------------------------------------------------- inspection
async def _inspect_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[STORE].state())


async def _inspect_snapshot(request: web.Request) -> web.Response:
    return web.json_response(request.app[STORE].snapshot())


async def _inspect_reset(request: web.Request) -> web.Response:
    request.app[EMU].reset()
    return web.json_response({"ok": True})


async def _inspect_faults(request: web.Request) -> web.Response:
    emu: Emulator = request.app[EMU]
    if request.method == "POST":
        data = await request.json() if request.can_read_body else {}
        apply_faults(emu, data)
    return web.json_response(emu.faults.describe())


async def _inspect_requests(request: web.Request) -> web.Response:
    return web.json_response({"requests": list(request.app[EMU].log)})


def apply_faults(emu: Emulator, data: dict[str, Any]) -> None:
    """{"replace": bool, "seed", "latency_ms", "latency": LatencyConfig | None, "rules": [FaultRule...]}; without
    replace, rules are appended."""
    rules = [FaultRule.model_validate(r) for r in data.get("rules", [])]
    if data.get("replace", False) or {"seed", "latency_ms", "latency"} & data.keys():
        latency = data.get("latency", emu.faults.config.latency)
        cfg = FaultsConfig(
            seed=data.get("seed", emu.faults.config.seed),
            latency_ms=data.get("latency_ms", emu.faults.config.latency_ms),
            latency=LatencyConfig.model_validate(latency) if isinstance(latency, dict) else latency,
            rules=rules if data.get("replace", False) else [a.rule for a in emu.faults.active] + rules,
        )
        emu.faults.set(cfg)
    else:
        emu.faults.add(rules)


def create_app(config: EmulatorConfig | None = None) -> web.Application:
    config = config or EmulatorConfig()
    emu = Emulator(config)
    app = web.Application(middlewares=[_not_found])
    app[EMU] = emu
    app[STORE] = emu.store
    for method, template, handler in ROUTES:
        async def view(request: web.Request, _h: Handler = handler, _t: str = template) -> web.StreamResponse:
            return await _api(request, _h, _t)

        app.router.add_route(method, template, view)
        if template.endswith("/") and template != "/":
            app.router.add_route(method, template.rstrip("/"), view)  # clients often omit the trailing slash
    add_oauth_routes(app, emu.oauth, emu.specs)
    app.router.add_get("/_emulator/state", _inspect_state)
    app.router.add_get("/_emulator/snapshot", _inspect_snapshot)
    app.router.add_post("/_emulator/reset", _inspect_reset)
    app.router.add_get("/_emulator/faults", _inspect_faults)
    app.router.add_post("/_emulator/faults", _inspect_faults)
    app.router.add_get("/_emulator/requests", _inspect_requests)
    return app


# ---------------------------------------------------------------------------------------------------- runners
class EmulatorServer:
    """`async with EmulatorServer(config) as emu:` → serving on a free loopback port at `emu.base_url`."""

    def __init__(self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.port = port
        self.app = create_app(self.config)
        self.runner: web.AppRunner | None = None

    @property
    def emulator(self) -> Emulator:
        return self.app[EMU]

    @property
    def store(self) -> Store:
        return self.app[STORE]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> "EmulatorServer":
        self.runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001 - aiohttp has no public port
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def __aenter__(self) -> "EmulatorServer":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def state(self) -> dict[str, Any]:
        return copy.deepcopy(self.store.state())

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.store.snapshot())

    def set_faults(self, rules: list[dict[str, Any] | FaultRule] | None = None, **kw: Any) -> None:
        apply_faults(
            self.emulator, {"rules": [r.model_dump() if isinstance(r, FaultRule) else r for r in rules or []], **kw}
        )

    def reset(self) -> None:
        self.emulator.reset()

    def requests(self) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.emulator.log))


class ThreadedEmulator:
    """The emulator on its own event loop in a daemon thread; usable from sync and async code alike."""

    def __init__(self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = EmulatorServer(config, host, port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ghl-emulator", daemon=True)

    def start(self) -> "ThreadedEmulator":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> "ThreadedEmulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def config(self) -> EmulatorConfig:
        return self.server.config

    def state(self) -> dict[str, Any]:
        return self._call(self.server.state)

    def snapshot(self) -> dict[str, Any]:
        return self._call(self.server.snapshot)

    def requests(self) -> list[dict[str, Any]]:
        return self._call(self.server.requests)

    def set_faults(self, rules: list[dict[str, Any] | FaultRule] | None = None, **kw: Any) -> None:
        self._call(lambda: self.server.set_faults(rules, **kw))

    def reset(self) -> None:
        self._call(self.server.reset)


def run(host: str = "127.0.0.1", port: int = 8090, config_path: str | Path | None = None) -> None:
    """Serve until interrupted (the `apro-sync emulator` command; also fine as a subprocess entry point)."""
    config = load_config(config_path)
    print(f"GoHighLevel emulator on http://{host}:{port} ({len(config.locations)} location(s))", flush=True)
    web.run_app(create_app(config), host=host, port=port, access_log=None, print=None, handler_cancellation=True)


if __name__ == "__main__":  # python -m emulator.server [port] [config]
    import sys

    run(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8090, config_path=sys.argv[2] if len(sys.argv) > 2 else None)
