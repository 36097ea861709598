"""Delivery on a real Apache Kafka broker (scripts/kafka-broker.sh): a consumer group of two workers.

One broker serves the whole session, so each test has topics and a consumer group of its own. The
two workers share one audit store, chDB served over ClickHouse's HTTP interface by another process
(tests/clickhouse_http.py): the production client path. What the mock-cluster tests prove in one
worker (crash between write and commit, restart after a store failure) these prove across a group:
partitions moving between workers, a worker killed with SIGKILL and restarted while events flow.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from flowaudit.common.settings import Settings
from flowaudit.domain.policy import Policy
from tests.clickhouse_http import ClickHouseHTTPServer
from tests.helpers import SteadyProducer, WorkerProcess, run_cli, story_of, wait_for
from tests.kafka_broker import RealKafka, own_topics
from tests.streams.two_workers import audited, run_partition_moves, shared_env

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


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


FLOW_TOPICS = (
    "FLOWAUDIT_TOPIC_DEVICE_SYNC",
    "FLOWAUDIT_TOPIC_SHARING",
    "FLOWAUDIT_TOPIC_SUBCONTRACTOR_TRANSFER",
)


def commits_behind(broker: RealKafka, topics: dict[str, str]) -> dict[tuple[str, int], tuple[int, int]]:
    """The flow-topic partitions whose committed offset (of the test's group) is short of their end:
    (topic, partition) → (committed, end)."""
    admin = broker.admin()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, client_id="flowaudit-tests-ends")
    try:
        committed = {
            (tp.topic, tp.partition): meta.offset
            for tp, meta in admin.list_consumer_group_offsets(topics["FLOWAUDIT_CONSUMER_GROUP"]).items()
        }
        partitions = [
            TopicPartition(topics[name], number)
            for name in FLOW_TOPICS
            for number in sorted(consumer.partitions_for_topic(topics[name]) or ())
        ]
        ends = consumer.end_offsets(partitions)
    finally:
        consumer.close()
        admin.close()
    return {
        (tp.topic, tp.partition): (committed.get((tp.topic, tp.partition), -1), end)
        for tp, end in ends.items()
        if end > 0 and committed.get((tp.topic, tp.partition), -1) < end
    }


def test_partitions_move_between_two_workers_on_kafka(
    real_kafka: RealKafka, store: str, tmp_path: Path, policy: Policy, workers: list[WorkerProcess]
) -> None:
    topics = own_topics(real_kafka)
    result = run_partition_moves(real_kafka.url, store, tmp_path, policy, workers, **topics)
    assert result["rows"] == result["distinct"] == result["sent"], result
    assert result["verify"]["ok"], result["verify"]
    assert result["second_consumed"] > 0


def test_a_worker_killed_while_events_flow_loses_and_doubles_nothing(
    real_kafka: RealKafka, store: str, tmp_path: Path, policy: Policy, workers: list[WorkerProcess]
) -> None:
    wait = partial(wait_for, explain=story_of(workers))  # a timeout names the workers' story
    topics = own_topics(real_kafka)
    first = WorkerProcess(shared_env(real_kafka.url, store, tmp_path / "a", **topics), tmp_path / "a.log")
    second = WorkerProcess(shared_env(real_kafka.url, store, tmp_path / "b", **topics), tmp_path / "b.log")
    workers += [first.start(), second.start()]
    overrides = {name.removeprefix("FLOWAUDIT_").lower(): value for name, value in topics.items()}
    producer = SteadyProducer(real_kafka.bootstrap, Settings(**overrides), count=3000, rate=300, seed=77)
    producer.start()
    wait(lambda: audited(store)[1] >= 500, 90, "rows from both workers")
    pipeline_pid = json.loads((tmp_path / "a" / "worker.json").read_text())["pipeline_pid"]
    os.kill(first.process.pid if first.process else 0, signal.SIGKILL)  # mid-stream, no goodbye
    wait_for(first.exited, 30, "the killed worker")
    wait_for(lambda: not Path(f"/proc/{pipeline_pid}").exists(), 30, "its pipeline process")
    time.sleep(2)
    restarted = WorkerProcess(first.env, tmp_path / "a-again.log")
    workers.append(restarted.start())
    producer.join(60)
    wait(lambda: audited(store)[1] >= len(producer.ids), 120, "every event audited")
    # and the group's commits reach the end of every input partition while the workers run: a commit
    # that waits at an offset never acknowledged would re-read, not lose, but must not stay stuck
    wait(lambda: commits_behind(real_kafka, topics) == {}, 60, "the commits at the end of every partition")
    assert restarted.stop(signal.SIGTERM) == 0, restarted.log()
    assert second.stop(signal.SIGTERM) == 0, second.log()
    rows, distinct = audited(store)
    assert (rows, distinct) == (len(producer.ids), len(producer.ids))
    verified = json.loads(run_cli(second.env, "verify", "--json").stdout)
    assert verified["ok"], verified
