"""Deployment artifacts: compose file, Dockerfile, Prometheus config and rules, Grafana provisioning and dashboard.

No Docker engine here, so the compose file is checked structurally against the code it runs (settings, topics,
metrics). promtool validates the Prometheus files and runs the rule unit tests (deploy/prometheus/alerts_test.yml).
PromQL in the dashboard and the rules is checked statically: every metric and label it names must exist in
foundations/metrics.py (or be added by Prometheus, or be a recording rule).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from pydantic import AliasChoices

import foundations.metrics as metrics_module
from apro_sync.apache_kafka import KAFKA_VERSION
from foundations.config import Settings
from foundations.topics import Topics
from tests.conftest import REPO

PROM_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "apro-sync.json"
OPERATIONS = REPO / "docs" / "operations.md"
APP_SERVICES = ("producer", "worker-1", "worker-2", "lag-exporter")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(REPO / "docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(PROM_DIR / "alerts.yml")["groups"] for rule in group["rules"]]


# --- settings names ---------------------------------------------------------------------------------------------


def settings_env_names() -> set[str]:
    """Every environment variable Settings reads: APRO_<FIELD>, or the field's alias choices."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def apro_keys(env: dict[str, Any]) -> set[str]:
    return {key for key in env if key.startswith("APRO_") or key == "KAFKA_BOOTSTRAP_SERVERS"}


def env_example() -> dict[str, str]:
    pairs = {}
    for line in (REPO / "deploy" / "env.example").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("#") and "=" in line and line[1:].strip().split("=")[0].isupper():
            line = line[1:].strip()  # commented-out examples must be real settings too
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


# --- docker-compose.yml ----------------------------------------------------------------------------------------------


def test_compose_has_every_service(services: dict[str, Any]) -> None:
    assert set(services) >= {"kafka", "kafka-init", *APP_SERVICES, "proxy", "prometheus", "grafana"}


def test_compose_images_are_pinned(services: dict[str, Any]) -> None:
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}", "compose runs the Kafka the tests run"
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image} is not pinned"
    for name in (*APP_SERVICES, "kafka-init"):
        assert services[name]["build"]["dockerfile"] == "Dockerfile"
        assert services[name]["image"] == services["producer"]["image"], "one image for every apro-sync role"


def test_compose_environment_keys_are_real_settings(services: dict[str, Any]) -> None:
    known = settings_env_names()
    for name, service in services.items():
        unknown = apro_keys(service.get("environment") or {}) - known
        assert not unknown, f"{name}: not a Settings field: {sorted(unknown)}"
    unknown = apro_keys(env_example()) - known
    assert not unknown, f"deploy/env.example: not a Settings field: {sorted(unknown)}"


def compose_settings(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in settings_env_names() | {"APRO_" + k.upper() for k in Settings.model_fields}:
        monkeypatch.delenv(key, raising=False)
    for key, value in (service.get("environment") or {}).items():
        monkeypatch.setenv(key, str(value))
    return Settings(_env_file=None)


def test_compose_environment_values_validate(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    producer = compose_settings(services["producer"], monkeypatch)
    assert producer.kafka_bootstrap_servers == "kafka:9092"
    assert producer.http_host == "0.0.0.0" and producer.http_port == 8080
    workers = [compose_settings(services[name], monkeypatch) for name in ("worker-1", "worker-2")]
    lag = compose_settings(services["lag-exporter"], monkeypatch)
    # One consumer group: the workers share partitions, and the lag exporter's default group is theirs.
    assert workers[0].worker_id == workers[1].worker_id == lag.worker_id == producer.worker_id
    assert all(w.metrics_port == 9108 and w.topic_partitions == 12 for w in workers)
    assert all(w.state_dir == Path("/var/lib/apro-sync") for w in workers)


def test_compose_workers_have_own_state_volumes(services: dict[str, Any], compose: dict[str, Any]) -> None:
    state = [
        next(v.split(":")[0] for v in services[name]["volumes"] if v.endswith(":/var/lib/apro-sync"))
        for name in ("worker-1", "worker-2")
    ]
    assert state[0] != state[1]
    assert set(state) <= set(compose["volumes"])


def test_compose_ports(services: dict[str, Any]) -> None:
    def published(service: dict[str, Any]) -> set[str]:
        return {str(p).rsplit(":", 2)[-1] if str(p).count(":") >= 1 else str(p) for p in service.get("ports", [])}

    assert "8080" in published(services["producer"])
    assert services["producer"]["ports"] == ["127.0.0.1:8080:8080"]  # plaintext: loopback only, TLS via proxy
    assert "9090" in published(services["prometheus"])
    assert "3000" in published(services["grafana"])
    for name in ("worker-1", "worker-2"):
        assert "9108" in {str(p) for p in services[name]["expose"]}
    command = services["lag-exporter"]["command"]
    assert command[0] == "lag-exporter" and command[command.index("--port") + 1] == "9308"
    assert command[command.index("--host") + 1] == services["lag-exporter"]["hostname"]  # compose network only
    assert "9308" in {str(p) for p in services["lag-exporter"]["expose"]}


def test_compose_publishes_only_the_tls_proxy_on_all_interfaces(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            if name == "proxy":
                assert str(port) in ("80:80", "443:443"), port
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_metrics_bind_to_the_compose_network(services: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.model_fields["metrics_host"].default == "127.0.0.1"
    for name in ("worker-1", "worker-2"):
        worker = compose_settings(services[name], monkeypatch)
        assert worker.metrics_host == services[name]["hostname"] == name, name
        assert "ports" not in services[name]
        assert "socket.gethostname()" in " ".join(services[name]["healthcheck"]["test"])
    assert "0.0.0.0" not in " ".join(services["lag-exporter"]["command"])


def test_compose_tls_proxy_forwards_only_webhooks(services: dict[str, Any]) -> None:
    proxy = services["proxy"]
    assert re.fullmatch(r"caddy:2\.\d+\.\d+", proxy["image"]), proxy["image"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in proxy["volumes"] if v.startswith("."))
    assert mounts["./deploy/caddy/Caddyfile"] == "/etc/caddy/Caddyfile"
    assert proxy["depends_on"]["producer"]["condition"] == "service_healthy"
    caddyfile = (REPO / "deploy" / "caddy" / "Caddyfile").read_text(encoding="utf-8")
    code = "\n".join(line.split("#", 1)[0] for line in caddyfile.splitlines())
    assert re.search(r"@webhooks path /webhooks/aestheticspro/\*", code)
    assert re.findall(r"reverse_proxy\s+(\S+)", code) == ["producer:8080"]
    assert "handle @webhooks" in code and "respond 404" in code  # /metrics, /readyz never proxied
    assert not re.search(r"^\s*log\b", code, flags=re.MULTILINE), "an access log would write the token"
    # The proxy's timeouts are the producer's defaults.
    defaults = {k: Settings.model_fields[k].default for k in
                ("http_header_timeout_s", "http_body_timeout_s", "http_keepalive_timeout_s")}
    assert f"read_header {defaults['http_header_timeout_s']:g}s" in code
    assert f"read_body {defaults['http_body_timeout_s']:g}s" in code
    assert f"idle {defaults['http_keepalive_timeout_s']:g}s" in code


def test_compose_one_size_limit_from_http_to_broker(services: dict[str, Any]) -> None:
    from producer.publisher import RECORD_HEADROOM_BYTES

    broker_limit = int(services["kafka"]["environment"]["KAFKA_MESSAGE_MAX_BYTES"])
    max_body = Settings.model_fields["max_body_bytes"].default
    assert broker_limit >= max_body + RECORD_HEADROOM_BYTES


def test_env_example_puts_the_token_in_the_path() -> None:
    text = (REPO / "deploy" / "env.example").read_text(encoding="utf-8")
    assert "?token=" not in text.replace("`?token=` gets 404", "")
    assert "/webhooks/aestheticspro/<token>" in text
    assert env_example().get("WEBHOOK_PUBLIC_HOST")


def test_compose_commands_are_cli_subcommands(services: dict[str, Any]) -> None:
    from typer.main import get_command

    from apro_sync.cli import app

    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    for name in APP_SERVICES:
        assert services[name]["command"][0] in commands, name


def test_compose_depends_on_and_healthchecks(services: dict[str, Any]) -> None:
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy"
        assert depends["kafka-init"]["condition"] == "service_completed_successfully"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name in ("kafka", *APP_SERVICES, "prometheus", "grafana"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert "kafka-broker-api-versions.sh" in " ".join(services["kafka"]["healthcheck"]["test"])


def test_compose_kafka_is_kraft_with_persistent_volume(services: dict[str, Any], compose: dict[str, Any]) -> None:
    env = services["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    data = next(v for v in services["kafka"]["volumes"] if v.endswith(":" + env["KAFKA_LOG_DIRS"]))
    assert data.split(":")[0] in compose["volumes"]
    assert len(env["CLUSTER_ID"]) == 22, "KRaft cluster id must be a base64-encoded UUID"


def test_compose_creates_every_topic_from_the_code_definitions(services: dict[str, Any]) -> None:
    init = services["kafka-init"]
    assert init["command"] == ["topics"], "topics come from foundations/topics.py, not a second list"
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "APRO_TOPIC_PARTITIONS", "APRO_TOPIC_REPLICATION", "APRO_WORKER_ID"):
        assert init["environment"][key] == services["worker-1"]["environment"][key], key
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in init["environment"].items()
                                           if k.startswith("APRO_")}, kafka_bootstrap_servers="kafka:9092")
    names = {spec.name for spec in settings.topic_specs()}
    assert names >= set(Topics().all()) and f"{settings.worker_id}-client_state-changelog" in names
    assert all(spec.partitions == 12 for spec in settings.topic_specs()
               if not spec.name.endswith((".redriven", ".oauth-tokens")))


def test_compose_mounted_host_paths_exist(services: dict[str, Any]) -> None:
    mounts = [(name, v.split(":")[0]) for name, s in services.items() for v in s.get("volumes", [])]
    host_paths = [(name, path) for name, path in mounts if path.startswith((".", "/"))]
    assert host_paths, "expected bind mounts (Prometheus, Grafana)"
    for name, path in host_paths:
        assert (REPO / path).exists(), f"{name}: mounts {path}, which is not in the repo"
    for name in APP_SERVICES:
        assert services[name]["env_file"] == ".env"
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_compose_grafana_mounts_match_provisioning(services: dict[str, Any]) -> None:
    volumes = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["grafana"]["volumes"] if v.startswith("."))
    assert volumes["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "apro-sync.yml")["providers"][0]
    assert volumes["./deploy/grafana/dashboards"] == provider["options"]["path"]
    prom_volumes = dict(
        v.rsplit(":", 1)[0].split(":", 1) for v in services["prometheus"]["volumes"] if v.startswith(".")
    )
    config = next(arg for arg in services["prometheus"]["command"] if arg.startswith("--config.file="))
    assert config.split("=", 1)[1] == prom_volumes["./deploy/prometheus"] + "/prometheus.yml"


# --- Dockerfile ------------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_runs_as_non_root_with_cli_entrypoint() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert any(k == "RUN" and "pip install ." in v for k, v in instructions)
    users = [(i, v) for i, (k, v) in enumerate(instructions) if k == "USER"]
    assert users, "no USER instruction: the container would run as root"
    last_user_index, user = users[-1]
    assert user.split(":")[0] not in ("root", "0")
    assert all(k != "RUN" for k, _ in instructions[last_user_index:]), "RUN after USER would need root"
    entrypoint = [v for k, v in instructions if k == "ENTRYPOINT"]
    assert entrypoint and json.loads(entrypoint[-1]) == ["apro-sync"]
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'apro-sync = "apro_sync.cli:main"' in pyproject


def test_dockerignore_keeps_secrets_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".env", ".git", "tests"} <= set(ignored)


# --- promtool --------------------------------------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; .ci/run installs it)")
    return subprocess.run([exe, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=120)


def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_metrics_endpoint(services: dict[str, Any]) -> None:
    config = load_yaml(PROM_DIR / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in config["scrape_configs"]
    }
    assert targets["apro-sync-producer"] == ["producer:8080"]
    assert sorted(targets["apro-sync-worker"]) == ["worker-1:9108", "worker-2:9108"]
    assert targets["apro-sync-lag"] == ["lag-exporter:9308"]
    for job, hosts in targets.items():
        for target in hosts:
            host, port = target.split(":")
            if host == "localhost":
                continue
            service = services[host]
            open_ports = {str(p) for p in service.get("expose", [])} | {
                str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])
            }
            assert port in open_ports, f"{job}: {target} is not a port {host} listens on"


def test_alert_rules_are_complete(alert_rules: list[dict[str, Any]]) -> None:
    alerts = {rule["alert"]: rule for rule in alert_rules if "alert" in rule}
    assert {
        "AproSyncConsumerLagGrowing", "AproSyncDeadLetterGrowing", "AproSyncGhlRateLimited", "AproSyncGhlServerErrors",
        "AproSyncGhlPermanentErrors", "AproSyncLocationSilent", "AproSyncWorkerDown", "AproSyncProducerUnavailable",
    } <= set(alerts)
    runbook_anchors = markdown_anchors(OPERATIONS)
    tested = (PROM_DIR / "alerts_test.yml").read_text()
    for name, rule in alerts.items():
        assert rule.get("for"), f"{name}: no `for:`"
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"], name
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert path == "docs/operations.md" and anchor in runbook_anchors, f"{name}: runbook section #{anchor} missing"
        assert f"alertname: {name}" in tested, f"{name} has no promtool unit test"


def markdown_anchors(path: Path) -> set[str]:
    anchors = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


# --- PromQL names --------------------------------------------------------------------------------------------------

PROMETHEUS_LABELS = {"job", "instance"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
    "inf", "nan", "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values",
}


def exported_series() -> dict[str, set[str]]:
    """Series name → label names for every metric in foundations/metrics.py, as Prometheus stores them."""
    series: dict[str, set[str]] = {"up": set()}
    for obj in vars(metrics_module).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        labels = set(obj._labelnames)
        for family in obj.describe():
            if family.type == "counter":
                series[family.name + "_total"] = labels
            elif family.type == "histogram":
                series[family.name + "_bucket"] = labels | {"le"}
                series[family.name + "_count"] = labels
                series[family.name + "_sum"] = labels
            else:
                series[family.name] = labels
    return series


def recording_rules() -> dict[str, set[str]]:
    groups = load_yaml(PROM_DIR / "alerts.yml")["groups"]
    return {rule["record"]: set() for group in groups for rule in group["rules"] if "record" in rule}


def promql_problems(expr: str, known: dict[str, set[str]]) -> list[str]:
    """Names in `expr` that are not known series or labels. A static check: promtool cannot type-check names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "", text)  # Grafana variables
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    problems: list[str] = []
    used: list[str] = []
    grouping: set[str] = set()
    for match in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        grouping.update(label.strip() for label in match.group(1).split(",") if label.strip())
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    for match in re.finditer(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}", text):
        name, matchers = match.group(1), match.group(2)
        labels = re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers)
        if name is None:
            problems.append("selector without a metric name")
            continue
        used.append(name)
        for label in labels:
            if name in known and label not in known[name] | PROMETHEUS_LABELS:
                problems.append(f"{name} has no label {label}")
    text = re.sub(r"\{[^}]*\}", " ", text)
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, is_call = match.group(1), match.group(2)
        if is_call or word in PROMQL_WORDS:
            continue
        used.append(word)
    for name in used:
        if name not in known:
            problems.append(f"unknown metric {name}")
    available = set().union(*(known.get(name, set()) for name in used)) | PROMETHEUS_LABELS
    problems.extend(f"label {label} is on none of {sorted(set(used))}" for label in sorted(grouping - available))
    return problems


def test_promql_checker_catches_wrong_names() -> None:
    known = exported_series()
    assert promql_problems('sum by (location) (rate(apro_events_synced_total{kind="x"}[5m]))', known) == []
    assert promql_problems("rate(apro_events_synced[5m])", known) == ["unknown metric apro_events_synced"]
    assert promql_problems('rate(apro_events_synced_total{outcome="x"}[5m])', known) == [
        "apro_events_synced_total has no label outcome"
    ]
    assert promql_problems("sum by (reason) (apro_consumer_lag)", known) == [
        "label reason is on none of ['apro_consumer_lag']"
    ]
    assert (
        promql_problems("histogram_quantile(0.9, sum by (le) (rate(apro_ghl_request_seconds_bucket[1m])))", known) == []
    )
    assert promql_problems("apro_ghl_request_seconds_total", known) == ["unknown metric apro_ghl_request_seconds_total"]


def test_alert_and_recording_expressions_use_real_metrics(alert_rules: list[dict[str, Any]]) -> None:
    known = exported_series() | recording_rules()
    for rule in alert_rules:
        assert promql_problems(rule["expr"], known) == [], rule.get("alert") or rule.get("record")


# --- Grafana ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def data_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        if panel.get("type") == "row":
            yield from data_panels(panel.get("panels", []))
        else:
            yield panel


def test_grafana_datasource_is_provisioned_prometheus() -> None:
    datasources = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert [(d["type"], d["uid"], d["url"]) for d in datasources] == [("prometheus", "prometheus", "http://prometheus:9090")]


def test_dashboard_basics(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "apro-sync-overview"
    assert 36 <= dashboard["schemaVersion"] <= 41
    (location,) = [v for v in dashboard["templating"]["list"] if v["name"] == "location"]
    assert location["definition"] == "label_values(apro_events_normalized_total, location)"
    assert location["includeAll"] and location["multi"]


def test_dashboard_panels_have_datasource_and_targets(dashboard: dict[str, Any]) -> None:
    ids = set()
    for panel in data_panels(dashboard["panels"]):
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert panel["id"] not in ids
        ids.add(panel["id"])


def test_dashboard_expressions_use_real_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    known = exported_series()
    for panel in data_panels(dashboard["panels"]):
        for target in panel["targets"]:
            assert promql_problems(target["expr"], known) == [], f"{panel['title']}: {target['expr']}"


def test_dashboard_covers_every_pipeline_metric(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(t["expr"] for p in data_panels(dashboard["panels"]) for t in p["targets"])
    wanted = {
        "apro_webhooks_received_total", "apro_webhook_request_seconds", "apro_produce_errors_total",
        "apro_events_normalized_total", "apro_events_skipped_total", "apro_events_duplicate_total",
        "apro_events_deadlettered_total", "apro_events_synced_total", "apro_ghl_requests_total",
        "apro_ghl_request_seconds", "apro_ghl_retries_total", "apro_ghl_rate_limited_total",
        "apro_ghl_rate_budget_remaining", "apro_sync_e2e_seconds", "apro_last_event_timestamp_seconds",
        "apro_consumer_lag",
    }
    assert {name for name in wanted if name not in exprs} == set()
    titles = {p["title"] for p in data_panels(dashboard["panels"])}
    assert {
        "Webhooks by outcome", "Throughput per location", "Skipped by reason", "Dead-lettered",
        "Consumer lag per partition", "End-to-end latency", "GHL requests by status class", "GHL latency by endpoint",
        "429s and retries", "Rate budget remaining", "Last event age per location",
    } <= titles
    # Location-scoped panels follow the dashboard's $location variable.
    for panel in data_panels(dashboard["panels"]):
        for target in panel["targets"]:
            if re.search(r"apro_(events|ghl|sync_e2e|last_event)", target["expr"]):
                assert 'location=~"$location"' in target["expr"], f"{panel['title']}: ignores $location"
