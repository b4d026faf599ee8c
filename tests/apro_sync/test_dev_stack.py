"""The README's first command, `apro-sync dev`: embedded broker, emulator, producer and worker come up, a posted
fixture reaches the raw topic (`apro-sync peek`) and GoHighLevel (the emulator), and SIGTERM stops it all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from apro_sync.processes import free_port
from tests.conftest import FIXTURES, REPO

pytestmark = pytest.mark.integration


def test_dev_stack_end_to_end(tmp_path: Path, using_embedded_broker: bool, request: pytest.FixtureRequest) -> None:
    port, emulator_port, metrics_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APRO_", "KAFKA_BOOTSTRAP"))}
    env.update(APRO_METRICS_PORT=str(metrics_port), APRO_STATE_DIR=str(tmp_path / "state"), APRO_LOG_LEVEL="INFO",
               APRO_TOPIC_PREFIX=f"dev{port}.", APRO_WORKER_ID=f"dev{port}")
    if not using_embedded_broker:  # dev on the session's Apache Kafka instead of its own embedded broker
        env["KAFKA_BOOTSTRAP_SERVERS"] = request.getfixturevalue("kafka_bootstrap")
    proc = subprocess.Popen([sys.executable, "-m", "apro_sync.cli", "dev", "--port", str(port),
                             "--emulator-port", str(emulator_port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    try:
        deadline = time.monotonic() + 90
        while not any("dev stack is up" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.2)
        time.sleep(0.5)
        text = "".join(lines)
        # Newcomer view: the banner comes last, the children's start-up logs went to the file it names.
        banner = text[text.index("dev stack is up"):]
        assert "Ctrl-C stops everything" in banner and '"level"' not in text and "faust" not in text.lower(), text
        log_file = Path(re.search(r"logs of the producer, worker and emulator: (\S+)", text).group(1))  # type: ignore[union-attr]
        url = re.search(r"POST webhooks to: (\S+)", text).group(1)  # type: ignore[union-attr]
        peek_env = re.search(r"raw records: KAFKA_BOOTSTRAP_SERVERS=(\S+) apro-sync peek", text).group(1)  # type: ignore[union-attr]
        answer = httpx.post(url, content=(FIXTURES / "appointment_created.json").read_bytes(),
                            headers={"Content-Type": "application/json"}, timeout=10)
        assert answer.status_code == 202, answer.text
        request_id = answer.json()["requestId"]

        peek = subprocess.run([sys.executable, "-m", "apro_sync.cli", "peek"], cwd=REPO, timeout=60, text=True,
                              env={**env, "KAFKA_BOOTSTRAP_SERVERS": peek_env}, capture_output=True)
        assert f"request={request_id}" in peek.stdout, peek.stdout + peek.stderr

        emulator = f"http://127.0.0.1:{emulator_port}/_emulator/state"
        while True:  # the booking is synced: a contact with its audit note
            state = httpx.get(emulator, timeout=5).json()
            if state["contacts"] and state["notes"]:
                break
            assert time.monotonic() < deadline + 60, "".join(lines)[-3000:]
            time.sleep(0.5)
        assert [c["email"] for c in state["contacts"]] == ["jane.doe@example.com"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert code == 0, "".join(lines)[-3000:]
    logged = log_file.read_text()
    assert "==== worker" in logged and "==== producer" in logged and "metrics on" in logged
    with pytest.raises(httpx.HTTPError):  # the producer went down with it
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
