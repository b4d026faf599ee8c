"""What the two local brokers (embedded Tansu, single-node Apache Kafka) share: one child process on loopback
ports, started detached from our terminal, killed with us, and stopped by PID."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from foundations.kafka_admin import wait_for_broker


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


class BrokerProcess:
    """A broker child process on `127.0.0.1:port`; subclasses say how to `start` it."""

    persistent = False  # does a restart keep the log?

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """The exit code once the broker process has exited (negative: killed by that signal), else None."""
        return None if self._proc is None else self._proc.poll()

    def _launch(self, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
                ready_timeout_s: float = 30.0) -> None:
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, env=dict(env) if env is not None else None,
                start_new_session=True, preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
        try:
            wait_for_broker(self.bootstrap, ready_timeout_s)
        except TimeoutError:
            self.stop()
            raise

    def _terminate(self, timeout_s: float) -> None:
        """SIGTERM by PID, SIGKILL if it has not exited within `timeout_s`."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def start(self, timeout_s: float = 30.0) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        self._terminate(10.0)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
