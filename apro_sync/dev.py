"""`apro-sync dev`: the whole stack on embedded defaults, in one terminal.

Starts (as child processes, so each one behaves exactly as in production): the embedded Tansu broker unless
KAFKA_BOOTSTRAP_SERVERS is set, the GoHighLevel emulator unless a GoHighLevel token is configured, the webhook
producer and one Faust worker. Ctrl-C stops everything; if any child dies (the embedded broker included: the
stack would otherwise answer 503 forever), the rest are stopped too, with a message naming it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from apro_sync.embedded_broker import EmbeddedBroker
from apro_sync.processes import stop_all, wait_http
from foundations.config import Settings
from foundations.kafka_admin import ensure_topics, wait_for_broker

DEV_GHL_LOCATION = "emuLocation000000001"  # the emulator default config (emulator/config.py)
DEV_GHL_TOKEN = "pit-emulator-location-1"


def _spawn(name: str, args: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """A child process whose output goes to the stack's log file, not the terminal."""
    print(f"  starting {name}: apro-sync {' '.join(args)}", flush=True)
    log.write(f"==== {name}: apro-sync {' '.join(args)}\n".encode())
    log.flush()
    return subprocess.Popen([sys.executable, "-m", "apro_sync.cli", *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def _terminate_on_sigterm() -> None:
    """`kill`, `timeout` and process managers send SIGTERM: stop the children as Ctrl-C does, never orphan them."""

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run_dev(settings: Settings, *, port: int, emulator_port: int) -> None:
    _terminate_on_sigterm()
    broker: EmbeddedBroker | None = None
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    env = dict(os.environ)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    log_path = (settings.state_dir / "dev.log").resolve()
    log = open(log_path, "ab")
    try:
        if settings.kafka_bootstrap_servers:
            bootstrap = settings.kafka_bootstrap_servers
            wait_for_broker(settings.kafka)
            print(f"  using Kafka at {bootstrap}")
        else:
            broker = EmbeddedBroker().start()
            bootstrap = broker.bootstrap
            env["APRO_EMBEDDED_BROKER"] = "true"
            env.setdefault("APRO_KAFKA_SESSION_TIMEOUT_S", "2")
            print(f"  embedded Kafka-protocol broker (Tansu, in memory) at {bootstrap}")
        env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        ensure_topics(settings.kafka if settings.kafka_bootstrap_servers else bootstrap, settings.topic_specs())

        if settings.ghl_token is None:
            emulator_url = f"http://127.0.0.1:{emulator_port}"
            children.append(
                ("ghl-emulator", _spawn("ghl-emulator", ["emulator", "--port", str(emulator_port)], env, log))
            )
            wait_http(f"{emulator_url}/_emulator/state")
            env.update(
                APRO_GHL_BASE_URL=emulator_url, APRO_GHL_TOKEN=DEV_GHL_TOKEN, APRO_GHL_LOCATION_ID=DEV_GHL_LOCATION
            )
            print(f"  GoHighLevel emulator at {emulator_url} (inspect: {emulator_url}/_emulator/state)")
            # A fresh sub-account has none of our custom fields: create them as an operator would.
            provisioned = subprocess.run(
                [sys.executable, "-m", "apro_sync.cli", "provision"], env=env, capture_output=True, text=True
            )
            if provisioned.returncode != 0:
                print(provisioned.stdout + provisioned.stderr, file=sys.stderr)
                raise SystemExit("provisioning the GoHighLevel emulator failed")
            print("  provisioned the emulator's custom fields (apro-sync provision)")

        token = None
        if not settings.webhook_tokens:
            token = secrets.token_urlsafe(24)
            env["APRO_WEBHOOK_TOKENS"] = token
        env["APRO_HTTP_PORT"] = str(port)
        children.append(("producer", _spawn("producer", ["producer"], env, log)))
        children.append(("worker", _spawn("worker", ["worker"], env, log)))
        wait_http(f"http://{settings.http_host}:{port}/healthz")
        if settings.metrics_port:  # the worker is up: the banner is the last thing on the terminal
            wait_http(f"http://127.0.0.1:{settings.metrics_port}/metrics", timeout_s=90)

        base = f"http://{settings.http_host}:{port}/webhooks/aestheticspro"
        shown = token or "<one of your APRO_WEBHOOK_TOKENS>"
        fixtures = Path(__file__).resolve().parent.parent / "examples" / "webhooks"
        print(
            "\napro-sync dev stack is up.\n"
            f"  POST webhooks to: {base}/{shown}\n"
            f"  (optional resource hint: {base}/{shown}/appointments | clients | invoices)\n"
            f"  metrics: http://{settings.http_host}:{port}/metrics (producer), "
            f"http://127.0.0.1:{settings.metrics_port}/metrics (worker)\n"
            f"  example: curl -sS -H 'Content-Type: application/json' "
            f"--data-binary @{fixtures}/appointment_created.json "
            f"{base}/{shown}\n"
            f"  raw records: KAFKA_BOOTSTRAP_SERVERS={bootstrap} apro-sync peek\n"
            f"  logs of the producer, worker and emulator: {log_path}\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        while True:
            if broker is not None and not broker.running:
                print(f"  embedded Kafka broker exited with code {broker.returncode} (log: {broker.log_path}); "
                      "stopping the stack", file=sys.stderr, flush=True)
                raise SystemExit(1)
            for name, proc in children:
                if proc.poll() is not None:
                    print(f"  {name} exited with code {proc.returncode}; stopping the stack (see {log_path})",
                          file=sys.stderr)
                    raise SystemExit(1)
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\n  stopping…")
    finally:
        stop_all([proc for _, proc in reversed(children)], timeout_s=10)
        if broker is not None:
            broker.stop()
        log.close()
