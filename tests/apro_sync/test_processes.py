"""The process runner shared by dev, tests and benches: a real child on a loopback port, waited for and stopped."""

import subprocess
import sys

import pytest

from apro_sync.processes import ServiceProcess, free_port, http_ok, stop, wait_http, wait_port


def test_wait_for_a_real_server_then_stop_it(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout_s=30)
        wait_http(f"http://127.0.0.1:{port}/", timeout_s=30)
        assert http_ok(f"http://127.0.0.1:{port}/")
    finally:
        code = stop(proc, timeout_s=10)
    assert code is not None and proc.poll() is not None
    assert not http_ok(f"http://127.0.0.1:{port}/")


def test_waiting_for_nothing_times_out_with_the_port_named():
    port = free_port()
    with pytest.raises(TimeoutError, match=str(port)):
        wait_port(port, timeout_s=0.3)


def test_a_service_that_dies_before_it_is_ready_says_so(tmp_path):
    service = ServiceProcess("early-exit", [sys.executable, "-c", "raise SystemExit(3)"], {}, tmp_path / "logs",
                             tmp_path, ready=lambda: False, ready_timeout_s=30)
    with pytest.raises(RuntimeError, match="early-exit exited with 3"):
        service.start().wait_ready()
    assert service.stop() == 3
