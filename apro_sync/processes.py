"""One process runner for the dev stack, the local brokers, the tests and the benches: spawn a child on loopback
ports, wait until it answers, kill it with us, stop it by PID."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from foundations.kafka_admin import wait_for_broker

T = TypeVar("T")


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
        if proc is not None:
            stop(proc, timeout_s)

    def start(self, timeout_s: float = 30.0) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        self._terminate(10.0)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------ waiting

def wait_until(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.2, what: str = "condition") -> T:
    """Poll `predicate` until it returns a truthy value (returned) or raise TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s:.0f}s")
        time.sleep(interval_s)


def http_ok(url: str) -> bool:
    """The URL answers 200 now."""
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_http(url: str, timeout_s: float = 30.0, interval_s: float = 0.2) -> None:
    """Wait until `url` answers at all (any status below 500)."""
    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code < 500
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, timeout_s, interval_s, url)
    except TimeoutError:
        raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s") from None


def wait_port(port: int, timeout_s: float = 30.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts TCP connections on `host:port`."""
    def accepts() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex((host, port)) == 0

    try:
        wait_until(accepts, timeout_s, 0.1, f"port {port}")
    except TimeoutError:
        raise TimeoutError(f"server on port {port} did not start") from None


# ------------------------------------------------------------------------------------------------ stopping


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int | None:
    """SIGTERM by PID, SIGKILL if it has not exited within `timeout_s`; returns the exit code."""
    stop_all([proc], timeout_s)
    return proc.returncode


def stop_all(procs: Sequence[subprocess.Popen[bytes]], timeout_s: float = 10.0) -> None:
    """SIGTERM every running process first, then wait for each (SIGKILL after `timeout_s`)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ------------------------------------------------------------------------------------------------ services


class ServiceProcess:
    """One `apro-sync <command>` child process with its output captured to `<log_dir>/<name>.{out,err}`.

    `start()` appends to the same files, so the logs of every incarnation (after `kill()`/`restart()`) stay
    available for the PHI scan.
    """

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path, cwd: Path,
                 ready: Callable[[], bool], ready_timeout_s: float = 60.0) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_dir = log_dir
        self.cwd = cwd
        self._ready = ready
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.out"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.err"

    @property
    def log_files(self) -> list[Path]:
        return [self.stdout_path, self.stderr_path]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "ServiceProcess":
        if self.alive:
            raise RuntimeError(f"{self.name} already running")
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        return self

    def wait_ready(self, timeout_s: float | None = None) -> "ServiceProcess":
        def check() -> bool:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited with {self.returncode} before it was ready; "
                                   f"see {self.stderr_path}")
            return self._ready()

        wait_until(check, timeout_s or self.ready_timeout_s, 0.1, f"{self.name} ready")
        return self

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown code runs."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (graceful), SIGKILL after `timeout_s`. Returns the exit code."""
        if self.proc is None:
            return None
        return stop(self.proc, timeout_s)

    def restart(self, *, crash: bool = True) -> "ServiceProcess":
        self.kill() if crash else self.stop()
        return self.start().wait_ready()

    def __enter__(self) -> "ServiceProcess":
        if not self.alive:
            self.start()
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()
