"""Helpers for two workers in one consumer group sharing one audit store (tests/test_real_kafka_delivery.py).

The store is chDB served over ClickHouse's HTTP interface by another process (tests/clickhouse_http.py),
so both workers reach it the way production workers reach a ClickHouse server. These run on the real
Apache Kafka broker only: librdkafka's mock cluster intermittently answers a second member's SyncGroup
with InvalidRequestError (42), and that member then never gets partitions.
"""

from __future__ import annotations

import json
import signal
from functools import partial
from pathlib import Path
from typing import Any

import clickhouse_connect

from flowaudit.domain.checkpoint import NoteSigner
from flowaudit.domain.policy import Policy
from tests.helpers import WorkerProcess, run_cli, story_of, wait_for, worker_env
from tests.streams.test_worker_integration import _send_generated

CHAIN_KEY = "partition-moves-chain-key-0123456789"
# every worker of a store signs with the same Merkle log key, as they share the chain key
CHECKPOINT_KEY = NoteSigner("flowaudit", bytes(range(32))).skey


def shared_env(broker_url: str, store_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return worker_env(
        broker_url,
        data_dir,
        FLOWAUDIT_CLICKHOUSE_URL=store_url,
        FLOWAUDIT_CHAIN_KEY=CHAIN_KEY,
        FLOWAUDIT_CHECKPOINT_KEY=CHECKPOINT_KEY,
        FLOWAUDIT_SESSION_TIMEOUT_SECONDS="6",
        FLOWAUDIT_TOPIC_PARTITIONS="4",
        **extra,
    )


def audited(store_url: str) -> tuple[int, int]:
    """(rows, distinct event ids) in the shared store."""
    client = clickhouse_connect.get_client(dsn=store_url)
    try:
        rows, distinct = client.query("SELECT count(), uniqExact(event_id) FROM audit_events").result_rows[0]
    finally:
        client.close()
    return int(rows), int(distinct)


def run_partition_moves(
    broker_url: str,
    store_url: str,
    tmp_path: Path,
    policy: Policy,
    workers: list[WorkerProcess],
    **extra: str,
) -> dict[str, Any]:
    """A alone, then A and B sharing the partitions, then B alone: every event audited once."""
    wait = partial(wait_for, explain=story_of(workers))  # a timeout names the workers' story
    first = WorkerProcess(shared_env(broker_url, store_url, tmp_path / "a", **extra), tmp_path / "a.log")
    workers.append(first.start())
    sent = _send_generated(first.env, tmp_path, policy, 300, seed=41)
    wait(lambda: audited(store_url)[1] >= len(sent), 90, "the first worker's rows")

    second = WorkerProcess(shared_env(broker_url, store_url, tmp_path / "b", **extra), tmp_path / "b.log")
    workers.append(second.start())
    # both members hold partitions before the events of this phase are sent (else it tests one worker);
    # Faust logs this once the member's first assignment is recovered
    wait(lambda: "Worker ready" in second.log(), 90, "the second worker's partitions")
    sent += _send_generated(first.env, tmp_path, policy, 300, seed=42)
    wait(lambda: audited(store_url)[1] >= len(sent), 90, "rows while both workers run")
    assert first.stop(signal.SIGTERM) == 0, first.log()  # its partitions move to the second worker

    sent += _send_generated(second.env, tmp_path, policy, 300, seed=43)
    wait(lambda: audited(store_url)[1] >= len(sent), 90, "rows after the first worker left")
    consumed_by_second = second.metric("flowaudit_records_consumed_total")
    assert second.stop(signal.SIGTERM) == 0, second.log()
    verified = json.loads(run_cli(second.env, "verify", "--json").stdout)
    rows, distinct = audited(store_url)
    return {
        "sent": len(sent),
        "rows": rows,
        "distinct": distinct,
        "verify": verified,
        "second_consumed": consumed_by_second,
    }
