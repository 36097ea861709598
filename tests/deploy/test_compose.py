"""docker-compose.yml is valid (Debian's docker-compose parses it without an engine) and complete."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.deploy.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]


def test_compose_config_is_valid() -> None:
    compose = require_tool("docker-compose")
    result = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_stack_has_every_service_with_health_checks_and_named_volumes() -> None:
    stack = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = stack["services"]
    assert {"kafka", "clickhouse", "prometheus", "alertmanager", "grafana", "worker"} <= set(services)
    for name in ("kafka", "clickhouse", "prometheus", "alertmanager", "grafana", "worker"):
        assert "healthcheck" in services[name], name
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["worker"]["build"] == "."
    assert services["worker"]["environment"]["FLOWAUDIT_KAFKA_URL"] == "kafka://kafka:9092"
    assert set(stack["volumes"]) >= {"kafka-data", "clickhouse-data", "prometheus-data", "grafana-data"}
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"mounted path {source} does not exist"
    # published ports are bound to loopback only
    for service in services.values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port


def test_dockerfile_installs_the_package_and_runs_the_worker() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install" in text and 'CMD ["flowaudit", "worker"]' in text
    for package in ("flowaudit", "streams", "sinks", "schemas", "policy"):
        assert f"COPY {package} ./{package}" in text
