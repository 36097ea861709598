"""The audit writer (ClickHouseSink) around a store double: back-pressure while slow or failing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from flowaudit.common import metrics
from flowaudit.domain.policy import Policy
from flowaudit.sinks.clickhouse import PreparedBatch, StoreError
from flowaudit.sinks.verify import verify_store
from flowaudit.sinks.writer import IDLE_SECONDS, ClickHouseSink
from tests.sinks.test_clickhouse_store import generated


class SlowStore:
    """Prepares nothing real; each insert takes `seconds`, the first `failures` of them fail."""

    def __init__(self, seconds: float, failures: int = 0) -> None:
        self.seconds = seconds
        self.failures = failures
        self.heads: dict[str, Any] = {}
        self.inserted = 0

    def prepare(self, records: Any) -> PreparedBatch:
        return PreparedBatch(b"x", "token", len(records), 0)

    def insert_with_retry(self, batch: PreparedBatch, *, on_retry: Any, should_stop: Any, **_: Any) -> None:
        while True:
            time.sleep(self.seconds)
            if self.failures == 0:
                self.inserted += batch.rows
                return
            self.failures -= 1
            on_retry(1, StoreError("down"))

    def close(self) -> None:
        pass


def _backpressure() -> float:
    return metrics.REGISTRY.get_sample_value("flowaudit_backpressure") or 0.0


def test_a_slow_insert_raises_backpressure_while_it_lasts(policy: Policy) -> None:
    records = generated(policy, 10)

    async def run() -> list[float]:
        sink = ClickHouseSink(SlowStore(seconds=0.6), slow_seconds=0.2)  # type: ignore[arg-type]
        seen = []
        writing = asyncio.ensure_future(sink.write(records))
        await asyncio.sleep(0.1)
        seen.append(_backpressure())  # not slow yet
        await asyncio.sleep(0.3)
        seen.append(_backpressure())  # slower than 0.2 s: held back
        assert await writing == (10, 0)
        seen.append(_backpressure())  # written: released
        sink.close()
        return seen

    assert asyncio.run(run()) == [0.0, 1.0, 0.0]


def test_a_failing_insert_raises_backpressure_until_it_succeeds(policy: Policy) -> None:
    records = generated(policy, 10)

    async def run() -> list[float]:
        store = SlowStore(seconds=0.15, failures=2)
        sink = ClickHouseSink(store, slow_seconds=60)  # type: ignore[arg-type]
        writing = asyncio.ensure_future(sink.write(records))
        await asyncio.sleep(0.2)
        during = _backpressure()
        assert await writing == (10, 0)
        sink.close()
        return [during, _backpressure(), float(store.inserted)]

    assert asyncio.run(run()) == [1.0, 0.0, 10.0]


@pytest.mark.integration
def test_inserts_do_not_wait_for_a_whole_verify(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    records = generated(policy, 60_000)
    for start in range(0, 50_000, 5_000):
        store.write(records[start : start + 5_000])

    async def run() -> tuple[float, float, bool]:
        sink = ClickHouseSink(store)
        verifying = asyncio.ensure_future(sink.verify())
        await asyncio.sleep(0.05)  # the verify has started
        written = await sink.write(records[50_000:])
        write_done = time.monotonic()
        report = await verifying
        verify_done = time.monotonic()
        sink.executor.shutdown(wait=True)
        return write_done, verify_done, report.ok and written == (10_000, 0)

    write_done, verify_done, ok = asyncio.run(run())
    assert ok
    assert write_done < verify_done  # the insert ran between two verify windows
    assert verify_store(store).ok


class CallLog:
    """A store double that records its calls: audit inserts and consent calls, in order."""

    def __init__(self) -> None:
        self.heads: dict[str, Any] = {}
        self.calls: list[tuple[str, int, float]] = []  # (what, records, when)

    def prepare(self, records: Any) -> PreparedBatch:
        return PreparedBatch(b"x", "token", len(records), 0)

    def insert_with_retry(self, batch: PreparedBatch, **_: Any) -> None:
        self.calls.append(("audit", batch.rows, time.monotonic()))

    def prepare_consent_requests(self, requests: Any) -> Any:
        self.calls.append(("consents", sum(map(len, requests)), time.monotonic()))
        return None, [(len(records), 0) for records in requests]

    def insert_consents(self, batch: Any) -> None:
        pass

    def record_withdrawal_notices(self, batch: Any) -> None:
        pass

    def close(self) -> None:
        pass


def test_consent_batches_wait_to_be_written_together_while_flow_batches_do_not(policy: Policy) -> None:
    records = generated(policy, 4)
    store = CallLog()

    async def run() -> list[Any]:
        sink = ClickHouseSink(store, consent_delay_seconds=0.4)  # type: ignore[arg-type]
        started = time.monotonic()
        first = asyncio.ensure_future(sink.write_consents(["c1", "c2"]))  # type: ignore[list-item]
        await asyncio.sleep(0.1)
        flows = await sink.write(records)  # not held back by the consents waiting
        flows_at = time.monotonic() - started
        second = asyncio.ensure_future(sink.write_consents(["c3"]))  # type: ignore[list-item]
        results = [await first, await second, flows]
        return [*results, flows_at, store.calls[-1][2] - started]

    first, second, flows, flows_at, consents_at = asyncio.run(run())
    assert (first, second, flows) == ((2, 0), (1, 0), (4, 0))
    assert [(what, n) for what, n, _ in store.calls] == [("audit", 4), ("consents", 3)]  # one call for both
    assert flows_at < 0.3 and 0.35 <= consents_at < 1.0


def test_waiting_consent_batches_are_written_at_once_when_the_sink_stops(policy: Policy) -> None:
    store = CallLog()

    async def run() -> tuple[tuple[int, int], float]:
        sink = ClickHouseSink(store, consent_delay_seconds=30.0)  # type: ignore[arg-type]
        started = time.monotonic()
        writing = asyncio.ensure_future(sink.write_consents(["c1"]))  # type: ignore[list-item]
        await asyncio.sleep(0.05)
        await asyncio.get_running_loop().run_in_executor(None, sink.stop)  # as the pipeline process does
        return await asyncio.wait_for(writing, 2.0), time.monotonic() - started

    written, elapsed = asyncio.run(run())
    assert written == (1, 0) and elapsed < 2.0


def test_waiting_consent_batches_are_written_once_nothing_else_comes() -> None:
    """A pause in the flows (or the end of a backlog): the consents do not wait out the whole delay."""
    store = CallLog()

    async def run() -> tuple[tuple[int, int], float]:
        sink = ClickHouseSink(store, consent_delay_seconds=30.0)  # type: ignore[arg-type]
        started = time.monotonic()
        written = await asyncio.wait_for(sink.write_consents(["c1"]), 5.0)  # type: ignore[list-item]
        return written, time.monotonic() - started

    written, elapsed = asyncio.run(run())
    assert written == (1, 0) and IDLE_SECONDS <= elapsed < IDLE_SECONDS + 1.0
