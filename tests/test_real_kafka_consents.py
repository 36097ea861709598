"""The consent ledger on a real Apache Kafka broker: a Faust table over the consent topic (issue 14).

Consents and flows go through `flowaudit produce` (keyed by user_id) to a worker on the real broker;
its store is chDB served over ClickHouse's HTTP interface, so the test reads the audit rows while the
worker runs. The consents are produced first and the flows only once the worker recorded them: the
consent topic and the flow topics are not ordered with each other (a flow read before its grant is
flagged `consent-unverified`, see tests/streams/test_consents.py). Then the worker is stopped and
started again: the ledger comes back from the table's changelog (the consent topic's offsets are
committed, so nothing re-reads it), and flows after the restart are still judged with it.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
import yaml

from flowaudit.domain.policy import Policy
from flowaudit.evaluate import evaluate_lines
from tests.clickhouse_http import ClickHouseHTTPServer
from tests.helpers import REPO, WorkerProcess, run_cli, story_of, wait_for
from tests.kafka_broker import RealKafka, own_topics
from tests.streams.two_workers import shared_env

pytestmark = [pytest.mark.integration, pytest.mark.kafka]
DATA = Path(__file__).parent / "data" / "stream"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    with ClickHouseHTTPServer(tmp_path / "store", databases=["flowaudit"]) as server:
        yield f"{server.url}/flowaudit"


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.ensure_stopped()


def _query(store: str, sql: str) -> list[tuple[Any, ...]]:
    client = clickhouse_connect.get_client(dsn=store)
    try:
        return list(client.query(sql).result_rows)
    finally:
        client.close()


def _decisions(store: str) -> dict[str, dict[str, Any]]:
    rows = _query(store, "SELECT event_id, decision, rules, flags FROM audit_events")
    return {
        str(event_id)[-2:]: {"decision": decision, "rules": list(rules), "flags": list(flags)}
        for event_id, decision, rules, flags in rows
    }


def _produce(env: dict[str, str], name: str) -> None:
    done = run_cli(env, "produce", str(DATA / name))
    assert done.returncode == 0, done.stderr.decode()


def test_decisions_read_the_ledger_as_of_the_event_and_it_survives_a_restart(
    real_kafka: RealKafka, store: str, tmp_path: Path, policy: Policy, workers: list[WorkerProcess]
) -> None:
    wait = partial(wait_for, explain=story_of(workers))  # a timeout names the workers' story
    expected = yaml.safe_load((DATA / "expected.yaml").read_text())
    env = shared_env(real_kafka.url, store, tmp_path / "w", **own_topics(real_kafka))
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    workers.append(worker)
    _produce(env, "consents.jsonl")
    wait(lambda: _query(store, "SELECT count() FROM consent_events")[0][0] == 3, 60, "consents recorded")
    _produce(env, "flows-before-restart.jsonl")
    wait(lambda: len(_decisions(store)) == 4, 60, "the flows before the restart")
    assert _decisions(store) == expected["before_restart"], worker.log()
    assert "flowaudit_consents_total" in (worker.metric_text() or "")
    # breach scoping through the running worker's web API: anna's and ben's flows went to RunTracker
    exposure = run_cli(env, "report", "subject-exposure", "--recipient", "runtracker", "--format", "json")
    assert exposure.returncode == 0, exposure.stderr.decode()
    subjects = {
        row["decision"]: row["data_subjects"]
        for row in json.loads(exposure.stdout)
        if row["kind"] == "subjects"
    }
    assert subjects == {"allowed": 2, "blocked": 2}, subjects
    assert worker.stop(signal.SIGTERM) == 0, worker.log()

    again = WorkerProcess(env, tmp_path / "again.log").start()
    workers.append(again)
    wait(lambda: "consent ledger recovered from its changelog: 2 consents" in again.log(), 60, "recovery")
    _produce(env, "flows-after-restart.jsonl")
    wait(lambda: len(_decisions(store)) == 6, 60, "the flows after the restart")
    decisions = _decisions(store)
    assert {key: decisions[key] for key in expected["after_restart"]} == expected["after_restart"], (
        again.log()
    )
    # nothing re-read the consent topic: its three records are stored once
    assert _query(store, "SELECT count(), uniqExact(event_id) FROM consent_events")[0] == (3, 3)
    assert again.stop(signal.SIGTERM) == 0, again.log()

    # the stream decided as `flowaudit evaluate` does with the consents read first
    source = b"".join(
        (DATA / name).read_bytes()
        for name in ("consents.jsonl", "flows-before-restart.jsonl", "flows-after-restart.jsonl")
    )
    out = io.BytesIO()
    evaluate_lines(source.splitlines(), policy, out)
    evaluated = {
        line["event_id"][-2:]: {key: line[key] for key in ("decision", "rules", "flags")}
        for line in map(json.loads, out.getvalue().splitlines())
        if "decision" in line
    }
    assert evaluated == decisions
    # the withdrawal lists the recipient of the flow that relied on the consent before it (the report
    # reads the store now that no worker runs), and the flow that still cited it afterwards
    report = run_cli(env, "report", "consent-withdrawals", "--format", "json")
    assert report.returncode == 0, report.stderr.decode()
    rows = {
        (row["kind"], row["recipient"], row["decision"]): row["flows"] for row in json.loads(report.stdout)
    }
    # notify RunTracker of flow 11 (10:00, before the 12:00 withdrawal); flows 12 and 22 cited it after
    assert rows.get(("notify", "RunTracker", "allowed")) == 1, rows
    assert rows.get(("after-withdrawal", "RunTracker", "blocked")) == 2, rows


def test_the_worker_refuses_a_consent_topic_partitioned_unlike_the_flows(
    real_kafka: RealKafka, store: str, tmp_path: Path
) -> None:
    env = shared_env(real_kafka.url, store, tmp_path / "w", **own_topics(real_kafka, 4, consent_partitions=2))
    done = subprocess.run(
        [sys.executable, "-m", "flowaudit.cli", "worker"], env=env, capture_output=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 2
    (line,) = done.stderr.decode().strip().splitlines()[-1:]  # the one line after the settings log
    assert line.startswith("flowaudit worker: ") and "same number of partitions" in line, done.stderr
    assert env["FLOWAUDIT_TOPIC_CONSENT"] + " 2" in line and "FLOWAUDIT_TOPIC_CONSENT" in line


def test_the_ledger_follows_its_partitions_to_another_worker(
    real_kafka: RealKafka, store: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """A records the consents; B joins (a rebalance), then A leaves (another): B recovers the table's
    partitions from the changelog and judges the flows after that with the consents A recorded."""
    wait = partial(wait_for, explain=story_of(workers))  # a timeout names the workers' story
    expected = yaml.safe_load((DATA / "expected.yaml").read_text())["after_restart"]
    topics = own_topics(real_kafka)
    first = WorkerProcess(shared_env(real_kafka.url, store, tmp_path / "a", **topics), tmp_path / "a.log")
    workers.append(first.start())
    _produce(first.env, "consents.jsonl")
    wait(lambda: _query(store, "SELECT count() FROM consent_events")[0][0] == 3, 60, "consents recorded")
    second = WorkerProcess(shared_env(real_kafka.url, store, tmp_path / "b", **topics), tmp_path / "b.log")
    workers.append(second.start())
    wait(
        lambda: "consent ledger recovered from its changelog" in second.log(), 90, "the second worker's share"
    )
    assert first.stop(signal.SIGTERM) == 0, first.log()
    wait(
        lambda: "consent ledger recovered from its changelog: 2 consents" in second.log(),
        90,
        "all partitions on B",
    )
    _produce(second.env, "flows-after-restart.jsonl")
    wait(lambda: len(_decisions(store)) == 2, 60, "the flows after the rebalance")
    assert _decisions(store) == expected, second.log()
    assert second.stop(signal.SIGTERM) == 0, second.log()
