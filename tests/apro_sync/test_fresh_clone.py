"""A newcomer's first ten minutes: clone the repository alone into an empty folder, run the README's two set-up
commands there (in a fresh virtualenv), post a sample webhook, see it reach the GoHighLevel emulator.

In the clone the README's test command collects every test and runs the house rules (CI runs the whole command on
a clean clone itself). The commands are read from the README, so the test follows what a newcomer is told.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from apro_sync.processes import free_port
from tests.conftest import REPO

pytestmark = [pytest.mark.fresh_clone, pytest.mark.timeout(900)]


def readme_commands() -> tuple[str, str]:
    """The two set-up commands of the README's "Set up" block: (start the stack, run the tests)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Set up.*?```bash\n(.*?)```", text, flags=re.DOTALL)
    assert block, "README has no Set up block"
    commands = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, f"README's Set up block must hold exactly two commands: {commands}"
    return commands[0], commands[1]


def test_readme_commands_from_a_fresh_clone(tmp_path: Path) -> None:
    if not shutil.which("git") or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout")
    start_cmd, test_cmd = readme_commands()
    assert start_cmd.endswith("apro-sync dev") and "pip install -e ." in start_cmd
    assert "python -m pytest" in test_cmd

    clone, venv = tmp_path / "empty" / "apro-sync", tmp_path / "venv"
    clone.parent.mkdir()
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APRO_", "KAFKA_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", VIRTUAL_ENV=str(venv), PIP_DISABLE_PIP_VERSION_CHECK="1")
    # Pure Python in the clone: the compile is optional by design (setup.py) and CI's own install, a fresh clone
    # too, compiles under APRO_REQUIRE_COMPILED; compiling twice more here only cost CI three minutes.
    env["APRO_PURE_PYTHON"] = "1"

    # 1. Start the stack: the README's install, then `apro-sync dev` on free ports (8080/8090 may be taken here).
    install = start_cmd.split("&&")[0].strip()
    subprocess.run(["bash", "-c", install + " -q"], cwd=clone, env=env, check=True)
    port, emulator_port = free_port(), free_port()
    dev_env = {**env, "APRO_METRICS_PORT": str(free_port())}
    proc = subprocess.Popen(["apro-sync", "dev", "--port", str(port), "--emulator-port", str(emulator_port)],
                            cwd=clone, env=dev_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    try:
        deadline = time.monotonic() + 180
        while not any("dev stack is up" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.3)
        url = re.search(r"POST webhooks to: (\S+)", "".join(lines)).group(1)  # type: ignore[union-attr]
        sample = clone / "examples" / "webhooks" / "appointment_created.json"
        answer = httpx.post(url, content=sample.read_bytes(), headers={"Content-Type": "application/json"}, timeout=10)
        assert answer.status_code == 202, answer.text
        state_url = f"http://127.0.0.1:{emulator_port}/_emulator/state"
        while True:
            state = httpx.get(state_url, timeout=5).json()
            if state["contacts"] and state["notes"]:
                break
            assert time.monotonic() < deadline + 120, "".join(lines)[-3000:]
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0, "".join(lines)[-3000:]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise

    # 2. The README's test command in the clone: the test extras install and every test module imports (nothing
    #    missing from the repository), and the house rules pass there. CI runs the whole command on a clean clone
    #    itself (.ci/run), so running the suite here again would only double its time (docs/ci.md).
    collected = subprocess.run(["bash", "-c", f"{test_cmd} -p no:cacheprovider --collect-only"],
                               cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert collected.returncode == 0, (collected.stdout + collected.stderr)[-4000:]
    count = re.search(r"(\d+) tests collected", collected.stdout)
    assert count and int(count.group(1)) > 100, collected.stdout[-2000:]
    done = subprocess.run(["bash", "-c", f"{test_cmd} -p no:cacheprovider tests/test_house_rules.py"],
                          cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert re.search(r"\d+ passed", done.stdout), done.stdout[-2000:]
