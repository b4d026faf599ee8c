"""`apro-sync worker`: one Faust worker running every registered agent (normalization, then the sync engine)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import faust

from foundations.config import Settings
from foundations.kafka_admin import check_credentials, prepare_topics
from sinks.agent import register_sink
from streams.normalize.agent import register_normalizer
from workarounds.faust_app import build_app

Registration = Callable[[faust.App, Settings], None]

# Each stream stage appends its `register_*(app, settings)` here; `run` calls them in order.
AGENT_REGISTRATIONS: list[Registration] = [register_normalizer, register_sink]

log = logging.getLogger("apro_sync.worker")


def _configure_logging(level: str) -> None:
    try:
        from foundations.logs import configure_logging
    except ImportError:  # pragma: no cover - the structured logger ships with the package
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        return
    configure_logging(level, json=os.environ.get("APRO_LOG_FORMAT", "json") != "console")


def build_worker_app(settings: Settings, registrations: Sequence[Registration] | None = None,
                     app_id: str | None = None) -> faust.App:
    """The Faust app with every agent registered (the tests and the benchmark build it the same way)."""
    app = build_app(settings, app_id=app_id)
    for register in AGENT_REGISTRATIONS if registrations is None else registrations:
        register(app, settings)
    return app


def _prepare_topics(settings: Settings) -> None:
    """Create missing topics with their production configs and report differences (the worker still starts)."""
    try:
        mismatches = prepare_topics(settings)
    except Exception as exc:  # noqa: BLE001 - a broker that is not up yet: Faust waits for it
        log.warning("could not check the topics: %s", type(exc).__name__)
        return
    for mismatch in mismatches:
        log.warning("topic config differs from apro-sync's definition: %s", mismatch)


def _start_metrics(port: int, host: str = "127.0.0.1") -> None:
    """/metrics on host:port. Loopback by default; in compose the container's address on the compose network."""
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host)
        log.info("metrics on %s:%d/metrics", host, port)


def run(settings: Settings, registrations: Sequence[Registration] | None = None) -> None:
    """Configure logging, build the app, start /metrics, run the Faust worker until stopped (blocks)."""
    level = os.environ.get("APRO_LOG_LEVEL", "INFO").upper()
    _configure_logging(level)
    check_credentials(settings.kafka)
    _prepare_topics(settings)
    app = build_worker_app(settings, registrations)
    _start_metrics(settings.metrics_port, settings.metrics_host)
    # override_logging=False: keep our redacting handler instead of mode's default console handler.
    worker = faust.Worker(app, loglevel=level, override_logging=False, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":  # pragma: no cover - `python -m apro_sync.worker` == `apro-sync worker`
    from foundations.config import load_settings

    run(load_settings())
