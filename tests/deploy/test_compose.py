"""docker-compose.yml is valid (Debian's docker-compose parses it without an engine) and complete."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]

# Every variable `docker compose up` requires, with a recognisable value for the rendered config.
REQUIRED = {
    "FLOWAUDIT_WRITER_PASSWORD": "test-writer-password",
    "FLOWAUDIT_READER_PASSWORD": "test-reader-password",
    "FLOWAUDIT_CHAIN_KEY": "test-chain-key-0123456789",
    # the pair `flowaudit checkpoint-key` prints (the witness parses the public key at start-up)
    "FLOWAUDIT_CHECKPOINT_KEY": "PRIVATE+KEY+flowaudit+bb2c0f36+AWTjSQ4QZKE1EKFnKtF/tWXEEvuGLN4ZCnxLaPjSptN7",
    "FLOWAUDIT_LOG_PUBLIC_KEY": "flowaudit+bb2c0f36+AWxXTD94HLidUvhh2OPhml1bYGAqS2ljdteU7KslVA5O",
    "FLOWAUDIT_WEB_TOKEN": "test-web-token-0123456789",
    "GRAFANA_ADMIN_PASSWORD": "test-grafana-admin-password",
    "KAFKA_CLUSTER_ID": "q1Sh-9_ISia_zwGINzRvyQ",  # the form `kafka-storage.sh random-uuid` prints
}


def _compose_config(variables: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with exactly these variables: no inherited environment, no .env file."""
    compose = require_tool("docker-compose")
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    return subprocess.run(
        [compose, "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **variables},
    )


def _rendered(tmp_path: Path) -> dict[str, Any]:
    result = _compose_config(REQUIRED, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rendered: dict[str, Any] = yaml.safe_load(result.stdout)
    return rendered


def test_compose_config_is_valid_with_the_required_variables(tmp_path: Path) -> None:
    services = _rendered(tmp_path)["services"]
    worker, grafana = services["worker"]["environment"], services["grafana"]["environment"]
    assert worker["FLOWAUDIT_CHAIN_KEY"] == REQUIRED["FLOWAUDIT_CHAIN_KEY"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == REQUIRED["GRAFANA_ADMIN_PASSWORD"]


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_compose_refuses_to_start_without_each_required_variable(missing: str, tmp_path: Path) -> None:
    variables = {name: value for name, value in REQUIRED.items() if name != missing}
    for variables_case in (variables, variables | {missing: ""}):  # unset, and set but empty
        result = _compose_config(variables_case, tmp_path)
        assert result.returncode != 0, f"compose config accepted a stack without {missing}"
        # the `${VAR:?message}` message names the variable (docker-compose 1.x prints only the message)
        assert f"{missing} is required" in result.stdout + result.stderr, result.stdout + result.stderr


def test_no_development_default_for_any_secret() -> None:
    deploy = sorted(p for p in (ROOT / "deploy").rglob("*") if p.suffix in {".yml", ".json", ".sh", ".py"})
    for path in [ROOT / "docker-compose.yml", ROOT / "Dockerfile", ROOT / "README.md", *deploy]:
        assert "change-me" not in path.read_text(), f"{path} has a change-me default"
    text = (ROOT / "docker-compose.yml").read_text()
    for name in REQUIRED:
        uses = text.count("${" + name)
        assert uses, f"docker-compose.yml does not use {name}"
        assert text.count("${" + name + ":?") == uses, f"every use of {name} must be ${{{name}:?...}}"


def _volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """source -> target of the rendered service's volumes (short `src:dst[:mode]` or long form)."""
    targets = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            targets[str(volume["source"])] = str(volume["target"])
        else:
            source, target = str(volume).split(":")[:2]
            targets[source] = target
    return targets


def test_kafka_keeps_its_log_on_the_named_volume_with_the_given_cluster_id(tmp_path: Path) -> None:
    services = _rendered(tmp_path)["services"]
    kafka = services["kafka"]
    # apache/kafka defaults KAFKA_LOG_DIRS to /tmp/kraft-combined-logs (lost with the container) and
    # CLUSTER_ID to one fixed id shared by every installation
    data = _volume_targets(kafka)["kafka-data"]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"].split(",")
    assert all(d == data or d.startswith(data.rstrip("/") + "/") for d in log_dirs), (log_dirs, data)
    assert kafka["environment"]["CLUSTER_ID"] == REQUIRED["KAFKA_CLUSTER_ID"]
    # broker and topic creator run the same image, a Kafka 4.x release
    assert services["kafka-topics"]["image"] == kafka["image"]
    assert kafka["image"].startswith("apache/kafka:4."), kafka["image"]


def test_each_service_gets_only_the_clickhouse_password_it_needs(tmp_path: Path) -> None:
    services = _rendered(tmp_path)["services"]
    writer, reader = REQUIRED["FLOWAUDIT_WRITER_PASSWORD"], REQUIRED["FLOWAUDIT_READER_PASSWORD"]

    def values(name: str) -> str:
        return "\n".join(f"{k}={v}" for k, v in services[name].get("environment", {}).items())

    # Grafana reads the audit store as the SELECT-only reader, never as the writer
    assert services["grafana"]["environment"]["FLOWAUDIT_READER_PASSWORD"] == reader
    assert writer not in values("grafana") and "WRITER" not in values("grafana")
    # the worker writes as the writer; its web API reads as the reader (sinks/reader.py), and the
    # reader's password appears nowhere else in its environment
    worker = services["worker"]["environment"]
    assert writer in worker["FLOWAUDIT_CLICKHOUSE_URL"] and reader not in worker["FLOWAUDIT_CLICKHOUSE_URL"]
    assert worker["FLOWAUDIT_CLICKHOUSE_READER_URL"].startswith(f"http://flowaudit_dpo:{reader}@")
    assert writer not in worker["FLOWAUDIT_CLICKHOUSE_READER_URL"]
    assert [k for k, v in worker.items() if reader in str(v)] == ["FLOWAUDIT_CLICKHOUSE_READER_URL"]
    # the ClickHouse init script creates both users
    clickhouse = services["clickhouse"]["environment"]
    assert clickhouse["FLOWAUDIT_WRITER_PASSWORD"] == writer
    assert clickhouse["FLOWAUDIT_READER_PASSWORD"] == reader
    # the witness reads consistency proofs as the reader, never as the writer
    witness = services["witness"]["environment"]
    assert witness["FLOWAUDIT_CLICKHOUSE_READER_URL"].startswith(f"http://flowaudit_dpo:{reader}@")
    assert [k for k, v in witness.items() if reader in str(v)] == ["FLOWAUDIT_CLICKHOUSE_READER_URL"]
    assert writer not in values("witness") and writer not in str(services["witness"]["command"])
    for name in set(services) - {"grafana", "worker", "clickhouse", "witness"}:
        assert writer not in values(name) and reader not in values(name), name
    # and the provisioned data source uses the reader's password from Grafana's environment
    datasources = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "flowaudit.yml"
    sources = yaml.safe_load(datasources.read_text())["datasources"]
    clickhouse_source = next(s for s in sources if s["type"] == "grafana-clickhouse-datasource")
    assert clickhouse_source["jsonData"]["username"] == "flowaudit_dpo"
    assert clickhouse_source["secureJsonData"] == {"password": "$FLOWAUDIT_READER_PASSWORD"}
    assert "WRITER" not in datasources.read_text().upper()


def test_grafana_installs_a_pinned_clickhouse_plugin(tmp_path: Path) -> None:
    grafana = _rendered(tmp_path)["services"]["grafana"]
    # GF_INSTALL_PLUGINS takes "<plugin id> <version>" entries, separated by commas
    plugins = [entry.split() for entry in grafana["environment"]["GF_INSTALL_PLUGINS"].split(",")]
    assert len(plugins) == 1 and plugins[0][0] == "grafana-clickhouse-datasource", plugins
    assert len(plugins[0]) == 2 and re.fullmatch(r"\d+\.\d+\.\d+", plugins[0][1]), plugins
    # plugin releases from 4.15.0 on need Grafana 11.6.0 or later
    major, minor, _ = (int(part) for part in plugins[0][1].split("."))
    grafana_version = tuple(int(part) for part in grafana["image"].split(":")[1].split(".")[:2])
    assert major == 4 and (minor < 15 or grafana_version >= (11, 6)), (plugins, grafana["image"])


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def test_worker_web_api_listens_on_loopback_and_metrics_on_the_compose_network(tmp_path: Path) -> None:
    services = _rendered(tmp_path)["services"]
    worker = services["worker"]
    environment = worker["environment"]
    # the web API (reports, verify) is for `docker compose exec worker flowaudit ...`, inside the
    # container; Grafana reads ClickHouse, nothing in the compose network calls the worker's API
    assert environment["FLOWAUDIT_WEB_BIND"] == "127.0.0.1"
    assert environment["FLOWAUDIT_WEB_TOKEN"] == REQUIRED["FLOWAUDIT_WEB_TOKEN"]
    assert "ports" not in worker and "6066" not in str(worker.get("expose", []))
    for name, service in services.items():
        assert "6066" not in str(service.get("ports", [])), name
    # Prometheus scrapes the metrics endpoint over the compose network, so it listens there (only)
    assert environment["FLOWAUDIT_METRICS_BIND"] == "0.0.0.0"
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = next(job for job in prometheus["scrape_configs"] if job["job_name"] == "flowaudit")
    assert job["static_configs"][0]["targets"] == [f"worker:{environment['FLOWAUDIT_METRICS_PORT']}"]
    # the image's own defaults: web API on loopback, only the metrics port exposed
    instructions = _dockerfile_instructions()
    env = dict(
        item.split("=", 1) for kind, arguments in instructions if kind == "ENV" for item in arguments.split()
    )
    assert env["FLOWAUDIT_WEB_BIND"] == "127.0.0.1" and env["FLOWAUDIT_METRICS_BIND"] == "0.0.0.0"
    exposed = [port for kind, arguments in instructions if kind == "EXPOSE" for port in arguments.split()]
    assert exposed == ["9464"], exposed


def _published(port: Any) -> tuple[str, int, int]:
    """(host ip, host port, container port) of a rendered port: `ip:host:container[/proto]` or long form."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), int(port["published"]), int(port["target"])
    parts = str(port).split("/")[0].rsplit(":", 2)
    if len(parts) == 1:  # container port only: a random host port on every interface
        return "", 0, int(parts[0])
    if len(parts) == 2:  # no ip: every interface
        return "", int(parts[0]), int(parts[1])
    return parts[0], int(parts[1]), int(parts[2])


def test_only_the_operator_uis_are_published_and_only_on_loopback(tmp_path: Path) -> None:
    services = _rendered(tmp_path)["services"]
    published = {
        name: [_published(port) for port in service.get("ports", [])] for name, service in services.items()
    }
    # reached through an SSH tunnel or a reverse proxy on the host; Kafka, ClickHouse and the
    # worker are reachable inside the compose network only
    assert {name: ports for name, ports in published.items() if ports} == {
        "grafana": [("127.0.0.1", 3000, 3000)],
        "prometheus": [("127.0.0.1", 9090, 9090)],
        "alertmanager": [("127.0.0.1", 9093, 9093)],
    }


def test_stack_has_every_service_with_health_checks_and_named_volumes() -> None:
    stack = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = stack["services"]
    names = ("kafka", "clickhouse", "prometheus", "alertmanager", "grafana", "worker", "witness")
    assert set(names) <= set(services)
    for name in names:
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
    # the worker draws /flowaudit/map/ with Graphviz's dot, a Debian package of the image
    runs = [arguments for kind, arguments in _dockerfile_instructions() if kind == "RUN"]
    assert any("apt-get install" in run and " graphviz" in run for run in runs), runs


def test_the_topic_creator_makes_every_topic_the_worker_checks(tmp_path: Path) -> None:
    """The worker creates no topics on a real cluster and refuses to start without one, or with the
    consent ledger's changelog partitioned unlike the input topics."""
    from flowaudit.common.settings import Settings
    from flowaudit.runtime import all_topics

    services = _rendered(tmp_path)["services"]
    script = "\n".join(services["kafka-topics"]["command"])
    worker_env = services["worker"].get("environment", {})
    settings = Settings(
        metrics_port=0, consumer_group=worker_env.get("FLOWAUDIT_CONSUMER_GROUP", "flowaudit-worker")
    )
    created = set(re.findall(r"[\w.-]+", script))
    assert set(all_topics(settings)) <= created, set(all_topics(settings)) - created
    assert set(re.findall(r"--partitions (\d+)", script)) == {"4"}
    assert "cleanup.policy=compact" in script


def test_the_witness_reads_the_checkpoints_apart_from_the_writer_and_is_scraped(tmp_path: Path) -> None:
    """`flowaudit witness` on the topic the worker publishes to, with its own state volume, only the
    log's public key (none of the writer's keys or volume), and its metrics endpoint scraped by its
    own Prometheus job (the flowaudit-integrity alerts read it)."""
    from flowaudit.cli import build_parser
    from flowaudit.common.settings import Settings
    from flowaudit.integrity import run_witness_command

    services = _rendered(tmp_path)["services"]
    witness, worker = services["witness"], services["worker"]
    command = [str(part) for part in witness["command"]]
    assert command[0] == "flowaudit"
    args = build_parser().parse_args(command[1:])  # flags the command has (`flowaudit witness --help`)
    assert args.handler is run_witness_command and args.idle_exit is None  # runs until stopped
    assert args.public_key == REQUIRED["FLOWAUDIT_LOG_PUBLIC_KEY"]
    # the public key is the one of the key the worker signs with
    assert worker["environment"]["FLOWAUDIT_CHECKPOINT_KEY"] == REQUIRED["FLOWAUDIT_CHECKPOINT_KEY"]
    # its state on a volume of its own, which no other service mounts
    volumes = _volume_targets(witness)
    assert list(volumes) == ["witness-data"], volumes
    assert Path(args.state).is_relative_to(volumes["witness-data"]), (args.state, volumes)
    for name, service in services.items():
        assert name == "witness" or "witness-data" not in _volume_targets(service), name
    assert "witness-data" in _rendered(tmp_path)["volumes"]
    # none of the writer's secrets: no chain key, no signing key (a witness holding them could be
    # made to cosign a forged log)
    environment = witness["environment"]
    for secret in ("FLOWAUDIT_CHAIN_KEY", "FLOWAUDIT_CHECKPOINT_KEY", "FLOWAUDIT_WEB_TOKEN"):
        assert secret not in environment and REQUIRED[secret] not in str(witness), secret
    # the broker and the topics the worker publishes to, which the topic creator makes
    assert environment["FLOWAUDIT_KAFKA_URL"] == worker["environment"]["FLOWAUDIT_KAFKA_URL"]
    settings = Settings(metrics_port=0)
    created = set(re.findall(r"[\w.-]+", "\n".join(services["kafka-topics"]["command"])))
    assert {settings.topic_checkpoints, settings.topic_witnessed} <= created
    assert witness["depends_on"]["kafka-topics"]["condition"] == "service_completed_successfully"
    # its metrics endpoint: on the compose network, health-checked, and scraped
    assert environment["FLOWAUDIT_METRICS_BIND"] == "0.0.0.0" and args.metrics_port
    assert f"127.0.0.1:{args.metrics_port}/metrics" in " ".join(witness["healthcheck"]["test"])
    assert "ports" not in witness
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["flowaudit-witness"]["static_configs"][0]["targets"] == [f"witness:{args.metrics_port}"]
