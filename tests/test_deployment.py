"""The Docker and monitoring files, checked without a Docker engine: schemas and linters,
and the container's own commands run against the real service."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DOCKERFILE = (REPO / "Dockerfile").read_text()
DASHBOARD = REPO / "monitoring/grafana/dashboards/k2actors.json"
ALERTS = REPO / "monitoring/alerts.yml"


def run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120, **kwargs)


def test_compose_file_follows_the_compose_specification():
    result = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", REPO / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "version" not in COMPOSE


def test_binance_stream_service_is_declared_as_specified():
    service = COMPOSE["services"]["binance-stream"]
    assert service["build"] == "."
    assert service["command"] == "python -m k2actors start --config /etc/k2actors/config.yaml"
    assert service["environment"] == {
        "K2_KAFKA_BOOTSTRAP_SERVERS": "kafka:29092",
        "K2_KAFKA_SCHEMA_REGISTRY_URL": "http://schema-registry:8081",
        "K2_BINANCE_ENABLED": "true",
        "K2_LOG_FORMAT": "json",
        "K2_CLUSTER_ENABLED": "true",  # replicas share the symbols: the service scales
    }
    assert service["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "schema-registry": {"condition": "service_healthy"},
    }
    assert service["restart"] == "unless-stopped"
    health = service["healthcheck"]
    assert (health["interval"], health["timeout"], health["retries"], health["start_period"]) == ("30s", "10s", 3, "60s")
    resources = service["deploy"]["resources"]
    assert resources["limits"] == {"cpus": "0.5", "memory": "512M"}  # the seed's
    assert resources["reservations"] == {"cpus": "0.25", "memory": "256M"}
    assert "./config.yaml:/etc/k2actors/config.yaml:ro" in service["volumes"]
    assert service["ports"] == ["9091"]  # a host port per replica
    assert service["networks"] == ["k2-network"]


def test_kafka_runs_in_kraft_mode_with_an_internal_and_a_host_listener():
    kafka = COMPOSE["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "INTERNAL://kafka:29092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "HOST://localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    for name in ("kafka", "schema-registry"):
        assert "healthcheck" in COMPOSE["services"][name]
    # the data volume is where Kafka writes, so topics outlive a recreated container
    assert "kafka-data:/var/lib/kafka/data" in kafka["volumes"] and env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"


def test_dockerfile_passes_hadolint():
    result = run(BIN / "hadolint", REPO / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_service_as_a_non_root_user_on_a_slim_image():
    assert ".venv" in (REPO / ".dockerignore").read_text().split()  # a local virtual environment stays out of the context
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE)
    assert stages == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.12-slim$", DOCKERFILE, re.MULTILINE)  # deployments are unchanged
    assert re.search(r"^USER (?!root|0\b)\S+", DOCKERFILE, re.MULTILINE)
    assert "EXPOSE 9091" in DOCKERFILE
    assert 'CMD ["python", "-m", "k2actors", "start", "--config", "/etc/k2actors/config.yaml"]' in DOCKERFILE
    assert "COPY config.yaml /etc/k2actors/config.yaml" in DOCKERFILE


@pytest.mark.parametrize("check", [("config", "monitoring/prometheus.yml"), ("rules", "monitoring/alerts.yml")])
def test_prometheus_files_pass_promtool(check):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    result = run(promtool, "check", *check, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_stream_service():
    scrape = yaml.safe_load((REPO / "monitoring/prometheus.yml").read_text())["scrape_configs"]
    assert {"names": ["binance-stream"], "type": "A", "port": 9091, "refresh_interval": "15s"} in [
        job["dns_sd_configs"][0] for job in scrape]  # every replica


def healthcheck_command() -> list[str]:
    line = re.search(r"HEALTHCHECK .*?CMD (\[.*?\])", DOCKERFILE, re.DOTALL).group(1)
    command = json.loads(line)
    assert command == COMPOSE["services"]["binance-stream"]["healthcheck"]["test"][1:]
    return command


def test_the_container_healthcheck_passes_against_the_running_service_and_fails_when_it_is_down(start_service):
    command = healthcheck_command()
    service = start_service()
    service.wait_ready()
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "K2_METRICS_PORT": str(service.metrics_port)}
    assert run(*command, env=env).returncode == 0
    assert service.stop() == 0
    failed = run(*command, env=env)
    assert failed.returncode == 1
    assert "unhealthy" in failed.stderr


def metric_names_used() -> set[str]:
    text = DASHBOARD.read_text() + ALERTS.read_text()
    names = set(re.findall(r"\bk2_[a-z0-9_]+", text))
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def test_dashboard_and_alerts_use_only_metrics_the_service_exports(start_service):
    service = start_service()
    service.wait_ready()
    status, body = service.get("/metrics")
    service.stop()
    exported = set(re.findall(r"^# TYPE (\S+)", body.decode(), re.MULTILINE))
    exported |= {name + "_total" for name in exported}  # counters are declared without the suffix
    used = metric_names_used()
    assert len(used) >= 12
    assert used <= exported, used - exported


def test_dashboard_covers_what_operators_watch():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("events per second", "latency", "connection", "circuit", "reconnects", "missing", "dead letters",
                  "producer errors", "memory", "backfill"):
        assert topic in titles
    datasource = yaml.safe_load((REPO / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    volumes = " ".join(COMPOSE["services"]["grafana"]["volumes"])
    assert "provisioning" in volumes and "dashboards" in volumes


def test_start_streaming_script_says_clearly_when_docker_compose_is_missing(tmp_path):
    for tool in ("bash", "dirname"):  # a PATH with the script's own needs, and no docker
        (tmp_path / tool).symlink_to(shutil.which(tool))
    result = run(tmp_path / "bash", REPO / "scripts/start-streaming.sh", env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert "'docker compose' is not available" in result.stderr
    assert "docker compose up -d binance-stream" in (REPO / "scripts/start-streaming.sh").read_text()


def test_readme_documents_every_metric_and_dlq_reason():
    from k2actors.core import frames
    from k2actors.core.telemetry import CATALOGUE

    readme = (REPO / "README.md").read_text()
    assert [name for name in CATALOGUE if f"| {name} |" not in readme] == []
    reasons = [value for name, value in vars(frames).items() if name.isupper() and isinstance(value, str)
               and value.islower() and "_" in value and name == value.upper()]
    assert len(reasons) >= 10
    assert [reason for reason in reasons if f"`{reason}`" not in readme] == []
