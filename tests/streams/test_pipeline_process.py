"""The pipeline in a second process, against a real chDB store there (no broker: the worker's side of
forwarding is `forward_while_writing`, tested with the in-process pipeline and in test_route)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flowaudit.common import metrics
from flowaudit.domain.codec import AvroCodec
from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.generator import EventGenerator
from flowaudit.produce import avro_record
from flowaudit.schemas import SCHEMA_DIR
from flowaudit.sinks.clickhouse import StoreError
from flowaudit.sinks.reports import load_reports, report_parameters
from flowaudit.streams.deadletter import InvalidRatioExceeded
from flowaudit.streams.messages import BatchResult, InboundMessage
from flowaudit.streams.pipe import PipelineConfig, PipelineProcessError
from flowaudit.streams.pipeline_process import PipelineMetrics, PipelineProcess
from flowaudit.streams.route import Routes
from tests.helpers import free_port

pytestmark = pytest.mark.integration
CODEC = AvroCodec(SCHEMA_DIR)
CHAIN_KEY = b"k" * 32


def _config(policy: Policy, data_dir: Path, **values: object) -> PipelineConfig:
    defaults: dict[str, object] = {
        "kinds": ("device_sync", "sharing", "subcontractor_transfer"),
        "policy": policy,
        "store_url": f"chdb://{(data_dir / 'audit').resolve()}",
        "chain_key": CHAIN_KEY,
        "insert_retry_max_seconds": 30.0,
        "invalid_ratio_limit": 0.5,
        "invalid_ratio_window": 1000,
        "loglevel": 30,
    }
    return PipelineConfig(**(defaults | values))  # type: ignore[arg-type]


@pytest.fixture
def started(policy: Policy, tmp_path: Path) -> Iterator[PipelineProcess]:
    pipeline = PipelineProcess(_config(policy, tmp_path))
    yield pipeline
    pipeline.close()


def _device_syncs(
    policy: Policy, count: int, seed: int
) -> tuple[list[dict[str, object]], list[InboundMessage]]:
    raws = [
        raw
        for raw in EventGenerator(policy, seed=seed).events(count * 4)
        if raw["event_type"] == "device_sync"
    ]
    raws = raws[:count]
    messages = [
        InboundMessage(
            "in.device_sync",
            offset % 2,
            offset,
            None,
            CODEC.encode("device_sync", avro_record(event_from_mapping(raw, policy))),
            1_700_000_000_000,
        )
        for offset, raw in enumerate(raws)
    ]
    return raws, messages


async def _run(
    pipeline: PipelineProcess, kind: str, messages: list[InboundMessage]
) -> tuple[Routes, BatchResult]:
    routes_ready, written = pipeline.submit(kind, messages)
    return await routes_ready, await written


def test_a_batch_is_decided_and_written_in_the_second_process(
    started: PipelineProcess, policy: Policy, tmp_path: Path
) -> None:
    raws, messages = _device_syncs(policy, 300, seed=3)
    corrupt = InboundMessage("in.device_sync", 0, 300, None, b"not avro", None)
    routes, result = asyncio.run(_run(started, "device_sync", [*messages, corrupt]))

    decider = Decider(policy)
    expected = [decider.decide(event_from_mapping(raw, policy)) for raw in raws]
    assert [index for index, _, _ in routes.blocked] == [i for i, d in enumerate(expected) if d.rules]
    assert [key for _, key, _ in routes.approved] == [
        str(raw["event_id"]).encode() for raw, d in zip(raws, expected, strict=True) if not d.rules
    ]
    assert [index for index, _ in routes.dead] == [300]
    assert (result.consumed, result.written, result.dead_lettered) == (301, 300, 1)
    assert result.allowed + result.blocked == 300

    # the same batch again (a restart before the commit): recognised, not written twice
    _, again = asyncio.run(_run(started, "device_sync", messages))
    assert (again.written, again.replayed) == (0, 300)

    report = load_reports()["user-disclosures"]
    user = str(raws[0]["user_id"])
    columns, rows = asyncio.run(started.query(report.sql, report_parameters(report, None, None, user)))
    assert rows and "recipient" in columns
    verified = asyncio.run(started.verify())
    assert verified.ok and verified.rows == 300

    started.close()
    assert started.process.exitcode == 0
    reopened = PipelineProcess(_config(policy, tmp_path))  # the store was closed and is durable
    try:
        assert asyncio.run(reopened.verify()).rows == 300
    finally:
        reopened.close()


def test_the_worker_serves_the_second_process_metrics_with_its_own(
    started: PipelineProcess, policy: Policy
) -> None:
    _, messages = _device_syncs(policy, 50, seed=4)
    _, result = asyncio.run(_run(started, "device_sync", messages))
    metrics.FORWARDED.labels("approved").inc(7)  # kept by the worker's process
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineMetrics(started))
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    names = [family.name for family in families]
    assert len(names) == len(set(names))
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }
    assert samples[("flowaudit_audit_rows_total", (("decision", "allowed"),))] == result.allowed
    assert samples[("flowaudit_records_consumed_total", (("kind", "device_sync"),))] == 50
    forwarded = metrics.FORWARDED.labels("approved")._value.get()
    assert samples[("flowaudit_forwarded_total", (("role", "approved"),))] == forwarded >= 7


def test_the_invalid_ratio_guard_of_the_second_process_fails_the_batch(
    policy: Policy, tmp_path: Path
) -> None:
    pipeline = PipelineProcess(_config(policy, tmp_path, invalid_ratio_window=10, invalid_ratio_limit=0.5))
    try:
        garbage = [InboundMessage("in.sharing", 0, n, None, b"junk", None) for n in range(12)]
        with pytest.raises(InvalidRatioExceeded, match="12 of the last 12"):
            asyncio.run(_run(pipeline, "sharing", garbage))
    finally:
        pipeline.close()


def test_batches_fail_when_the_second_process_dies(started: PipelineProcess, policy: Policy) -> None:
    _, messages = _device_syncs(policy, 20, seed=5)
    assert started.pid is not None
    os.kill(started.pid, signal.SIGKILL)
    started.process.join(10)
    with pytest.raises(PipelineProcessError):
        asyncio.run(_run(started, "device_sync", messages))
    with pytest.raises(PipelineProcessError):
        started.metric_families(timeout=5)


def test_a_store_that_cannot_be_opened_fails_the_start(policy: Policy, tmp_path: Path) -> None:
    config = _config(policy, tmp_path, store_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreError, match="cannot open the audit store"):
        PipelineProcess(config)
