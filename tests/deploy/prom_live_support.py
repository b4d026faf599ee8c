"""Helpers for running a real Prometheus against a live apro-sync stack (tests/deploy/test_prometheus_live.py).

Pure parts (config rewrite, dashboard query extraction, template substitution, result checks) are separate
from the one I/O class, `PrometheusServer`, which owns the `prometheus` child process and its HTTP API.
"""

from __future__ import annotations

import math
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

PROMETHEUS = shutil.which("prometheus")


# ------------------------------------------------------------------------------------------------ pure


def live_config(base: Mapping[str, Any], base_dir: Path, targets: Mapping[str, Sequence[str]],
                scrape_interval: str = "1s") -> dict[str, Any]:
    """The deploy config with the same jobs and rule files, targets replaced per job and a short interval.

    Every job of `base` must have targets in `targets` (and no unknown job): a job added to the deploy config
    without a live counterpart fails loudly instead of being silently dropped. Rule files are made absolute
    (Prometheus resolves them relative to the config file, which lives elsewhere in the test).
    """
    jobs = [sc["job_name"] for sc in base["scrape_configs"]]
    if set(jobs) != set(targets):
        raise ValueError(f"jobs {sorted(jobs)} vs live targets {sorted(targets)}")
    config: dict[str, Any] = {
        "global": {**base.get("global", {}), "scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "scrape_timeout": scrape_interval},
        "rule_files": [str((base_dir / path).resolve()) for path in base.get("rule_files", [])],
        "scrape_configs": [],
    }
    for sc in base["scrape_configs"]:
        job = dict(sc)
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
        job["static_configs"] = [{"targets": list(targets[sc["job_name"]])}]
        config["scrape_configs"].append(job)
    return config


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str


def _panels(panels: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest their panels


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every Prometheus target expression of every panel (rows included), with the panel title."""
    return [PanelQuery(str(p.get("title", "?")), str(t.get("refId", "?")), t["expr"])
            for p in _panels(dashboard.get("panels", [])) for t in p.get("targets", []) if t.get("expr")]


def grafana_vars(dashboard: Mapping[str, Any], rate_interval: str, interval: str, range_: str) -> dict[str, str]:
    """Values Grafana would put in for the dashboard's variables with "All" selected, plus the built-ins."""
    values = {"__rate_interval": rate_interval, "__interval": interval, "__range": range_}
    for var in dashboard.get("templating", {}).get("list", []):
        if not var.get("includeAll"):
            raise ValueError(f"variable {var['name']} has no All option; pick a value for it in the test")
        values[var["name"]] = var.get("allValue") or ".*"
    return values


_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace $var, ${var}, ${var:fmt} and [[var]]; an unknown variable is an error, not left in the query."""
    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")
        return values[name]

    return _VAR.sub(one, expr)


def has_finite_value(result: Sequence[Mapping[str, Any]]) -> bool:
    """A query_range (matrix) or query (vector) result holds at least one series with a finite sample: what a
    Grafana panel needs to draw something (NaN, e.g. a quantile over no observations, draws nothing)."""
    for series in result:
        points = series.get("values") or ([series["value"]] if "value" in series else [])
        if any(math.isfinite(float(v)) for _, v in points):
            return True
    return False


def rule_problems(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """Rules that failed to evaluate, or alerts in an unexpected state."""
    problems = []
    for group in groups:
        for rule in group.get("rules", []):
            name = rule.get("name", "?")
            if rule.get("health") == "err" or rule.get("lastError"):
                problems.append(f"{name}: {rule.get('lastError')}")
            if rule.get("type") == "alerting" and rule.get("state") not in ("inactive", "pending", "firing"):
                problems.append(f"{name}: state {rule.get('state')}")
    return problems


# ------------------------------------------------------------------------------------------------ I/O


class PrometheusServer:
    """A `prometheus` child process on loopback with its own TSDB directory; stopped by whoever started it."""

    def __init__(self, config: Mapping[str, Any], work_dir: Path, port: int) -> None:
        if PROMETHEUS is None:
            raise RuntimeError("prometheus binary not found")
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = work_dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
        self.log_path = work_dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.base, timeout=10.0)

    def start(self, ready_timeout_s: float = 30.0) -> "PrometheusServer":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(PROMETHEUS), f"--config.file={self.config_path}", f"--storage.tsdb.path={self.work_dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.client.get("/-/ready").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready within {ready_timeout_s:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.client.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def api(self, path: str, **params: Any) -> Any:
        resp = self.client.get(f"/api/v1/{path}", params=params)
        body = resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: str) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step)["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets", state="active")["activeTargets"]

    def rule_groups(self) -> list[dict[str, Any]]:
        return self.api("rules")["groups"]
