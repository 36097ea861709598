"""The pipeline in a second process: decode, validate, decide and write the audit store there.

Why: everything Python in one process shares one GIL. In one process the worker kept only ~1.2 of the
2 cores of the CI machine busy (bench/stream.py): Faust's own per-event work and this project's
pipeline took turns on one interpreter, while the ClickHouse engine alone ran outside it. Here the
worker's process keeps Faust (consuming, forwarding, acknowledging, committing) and a second process
owns the decision core and the audit store.

What crosses the pipe: a batch's partitions, offsets, values and timestamps (pickled columns) go to
the second process; its `Routes` come back as soon as the batch is decided, so the worker forwards
while the second process writes; the `BatchResult` comes back once the audit rows are durable. The
worker acknowledges a batch only after both, as in one process. A batch that fails in the second
process (the invalid-ratio guard, a store that cannot be written) fails in the worker; if the second
process dies, every pending batch fails and the worker stops without acknowledging them.

The second process also answers control requests: its metrics (merged into the worker's `/metrics`
by `PipelineMetrics`), reports and verify (run on the store's thread, as in one process), and the
stop of insert retries at shutdown. It ignores SIGINT/SIGTERM (the worker decides when it stops) and
is killed by the kernel if the worker's process dies (a crash of the worker is a crash of both).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from flowaudit.common import metrics
from flowaudit.common.redact import mask_url
from flowaudit.common.settings import Settings
from flowaudit.common.tuning import tune_process
from flowaudit.domain.policy import Policy
from flowaudit.sinks.clickhouse import AuditStore, StoreError
from flowaudit.sinks.verify import VerifyReport, verify_store
from flowaudit.sinks.writer import ClickHouseSink
from flowaudit.streams.pipeline import (
    BatchResult,
    InboundMessage,
    OutboundRecord,
    Publisher,
    Routes,
    Topics,
    batch_processors,
    count_forwarded,
    forward,
)

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class PipelineProcessError(RuntimeError):
    """The pipeline process did not start, died, or failed in a way that could not be sent back."""


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the second process needs, sent once when it is spawned."""

    settings: Settings
    policy: Policy
    chain_key: bytes
    loglevel: int


# ---------------------------------------------------------------------------------------------------
# The worker's side


@dataclass
class _PendingBatch:
    loop: asyncio.AbstractEventLoop
    routes: asyncio.Future[Routes]
    result: asyncio.Future[BatchResult]
    routed: bool = False  # set by the reader thread (the futures are settled later, on the loop)


def _settle(
    future: asyncio.Future[Any] | concurrent.futures.Future[Any], value: Any, error: BaseException | None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class PipelineProcess:
    """Starts the second process and talks to it; one per worker, shared by all agents.

    Raises StoreError (as `AuditStore.connect` does) when the second process cannot open the store.
    """

    def __init__(self, config: PipelineConfig, start_timeout: float = 120.0) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe(duplex=True)
        self.process = context.Process(
            target=serve, args=(child_end, config), name="flowaudit-pipeline", daemon=True
        )
        self.process.start()
        child_end.close()
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._batches: dict[int, _PendingBatch] = {}
        self._requests: dict[int, concurrent.futures.Future[Any]] = {}
        self._error: PipelineProcessError | None = None
        self._closing = False
        self._masked_url = mask_url(config.settings.resolved_clickhouse_url) or ""
        self._await_ready(start_timeout)
        self._reader = threading.Thread(target=self._read, name="pipeline-results", daemon=True)
        self._reader.start()

    def _await_ready(self, timeout: float) -> None:
        try:
            if not self._connection.poll(timeout):
                raise PipelineProcessError(f"the pipeline process did not start within {timeout:.0f} s")
            op, _, detail = self._connection.recv()
        except (EOFError, OSError, PipelineProcessError) as exc:
            self._stop_process(5.0)
            raise PipelineProcessError(
                f"the pipeline process did not start (exit code {self.process.exitcode}): {exc}"
            ) from exc
        if op != "ready":
            self._stop_process(30.0)
            raise detail if isinstance(detail, StoreError) else PipelineProcessError(str(detail))

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def masked_url(self) -> str:
        """The URL of the store the second process holds, password masked."""
        return self._masked_url

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._error is not None:
            raise self._error
        try:
            with self._send_lock:
                self._connection.send(message)
        except (OSError, ValueError) as exc:
            raise PipelineProcessError(f"the pipeline process is gone: {exc}") from exc

    def submit(
        self, kind: str, messages: Sequence[InboundMessage]
    ) -> tuple[asyncio.Future[Routes], asyncio.Future[BatchResult]]:
        """Hand a batch over (on the event loop): its routes when decided, its result when durable."""
        loop = asyncio.get_running_loop()
        pending = _PendingBatch(loop, loop.create_future(), loop.create_future())
        with self._lock:
            ident = next(self._ids)
            self._batches[ident] = pending
        topics, partitions, offsets, _, values, timestamps = zip(*messages, strict=True)
        try:
            self._send(("batch", ident, kind, topics, partitions, offsets, values, timestamps))
        except PipelineProcessError:
            with self._lock:
                self._batches.pop(ident, None)
            raise
        return pending.routes, pending.result

    def request(self, op: str, *args: Any) -> concurrent.futures.Future[Any]:
        """A control request (metrics, report, verify), answered from any thread."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            ident = next(self._ids)
            self._requests[ident] = future
        try:
            self._send((op, ident, *args))
        except PipelineProcessError as exc:
            with self._lock:
                self._requests.pop(ident, None)
            future.set_exception(exc)
        return future

    def metric_families(self, timeout: float) -> list[Metric]:
        families: list[Metric] = self.request("metrics").result(timeout)
        return families

    async def query(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        result: tuple[list[str], list[tuple[Any, ...]]] = await asyncio.wrap_future(
            self.request("report", sql, parameters)
        )
        return result

    async def verify(self) -> VerifyReport:
        report: VerifyReport = await asyncio.wrap_future(self.request("verify"))
        return report

    def stop(self) -> None:
        """Stop retrying failed inserts (shutdown): batches waiting on a down store then fail."""
        with contextlib.suppress(PipelineProcessError):
            self._send(("stop_writes", None))

    def close(self, timeout: float = 120.0) -> None:
        """Let the second process finish its writes, close the store and exit."""
        self._closing = True
        self.stop()
        with contextlib.suppress(PipelineProcessError):
            self._send(("close", None))
        self._stop_process(timeout)
        self._reader.join(timeout=5.0)
        self._connection.close()

    def _stop_process(self, timeout: float) -> None:
        self.process.join(timeout)
        if self.process.is_alive():
            log.error("the pipeline process did not exit within %.0f s; killing it", timeout)
            self.process.kill()
            self.process.join(5.0)

    def _read(self) -> None:
        while True:
            try:
                op, ident, value = self._connection.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # an answer that cannot be unpickled: the protocol is broken
                log.critical("unreadable answer from the pipeline process: %r", exc)
                break
            if op == "reply":
                with self._lock:
                    request = self._requests.pop(ident, None)
                if request is not None:
                    _settle(request, *value)
                continue
            with self._lock:
                pending = self._batches.get(ident) if op == "routes" else self._batches.pop(ident, None)
            if pending is None:
                continue
            if op == "routes":
                pending.routed = True
                self._resolve(pending, pending.routes, value, None)
            elif op == "done":
                self._resolve(pending, pending.result, value, None)
            else:  # "failed": before its routes were sent (not decided) or after (not written)
                self._fail(pending, value)
        if self._closing:  # `close` joins the process; a second join from here would race with it
            self._error = PipelineProcessError("the pipeline process is stopped")
        else:
            multiprocessing.connection.wait([self.process.sentinel], timeout=1.0)
            self._error = PipelineProcessError(
                f"the pipeline process died (exit code {self.process.exitcode})"
            )
            log.critical("%s", self._error)
        with self._lock:
            batches, self._batches = list(self._batches.values()), {}
            requests, self._requests = list(self._requests.values()), {}
        for pending in batches:
            self._fail(pending, self._error)
        for request in requests:
            request.set_exception(self._error)

    def _resolve(
        self, pending: _PendingBatch, future: asyncio.Future[Any], value: Any, error: BaseException | None
    ) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            pending.loop.call_soon_threadsafe(_settle, future, value, error)

    def _fail(self, pending: _PendingBatch, error: BaseException) -> None:
        if not pending.routed:
            self._resolve(pending, pending.routes, None, error)
            with contextlib.suppress(RuntimeError):
                pending.loop.call_soon_threadsafe(pending.result.cancel)
        else:
            self._resolve(pending, pending.result, None, error)


class RemotePipeline:
    """The worker's stand-in for a kind's `BatchProcessor` when the pipeline runs in the second process."""

    def __init__(self, kind: str, pipeline: PipelineProcess, publisher: Publisher, topics: Topics) -> None:
        self.kind = kind
        self.pipeline = pipeline
        self.publisher = publisher
        self.topics = topics

    async def process(self, messages: Sequence[InboundMessage]) -> BatchResult:
        routes_ready, written = self.pipeline.submit(self.kind, messages)
        # retrieve a late failure of the write even if forwarding failed first (no "never retrieved")
        written.add_done_callback(lambda future: future.cancelled() or future.exception())
        routes = await routes_ready
        await asyncio.gather(*forward(self.publisher, self.topics, messages, routes))
        result = await written
        count_forwarded(result)
        return result


class PipelineMetrics(Collector):
    """The worker's `/metrics`: the second process's metrics, and the worker's own ones."""

    def __init__(self, pipeline: PipelineProcess, timeout: float = 10.0) -> None:
        self.pipeline = pipeline
        self.timeout = timeout

    def collect(self) -> Iterator[Metric]:
        own = [family for metric in metrics.WORKER_PROCESS_METRICS for family in metric.collect()]
        names = {family.name for family in own}
        try:
            families = self.pipeline.metric_families(self.timeout)
        except (PipelineProcessError, concurrent.futures.TimeoutError) as exc:
            log.warning("metrics of the pipeline process unavailable: %s", exc)
            families = []
        yield from (family for family in families if family.name not in names)
        yield from own


# ---------------------------------------------------------------------------------------------------
# The second process's side


class _NoForwarding:
    async def publish(self, topic: str, records: Sequence[OutboundRecord]) -> None:
        raise RuntimeError("the pipeline process does not forward: the worker's process does")


def _portable(error: BaseException) -> BaseException:
    """The error itself if it survives pickling, else a description of it."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return PipelineProcessError(f"{type(error).__name__}: {error}")
    return error


def _die_with_parent() -> None:
    # The signal comes when the *thread* that started this process ends: `build_runtime` runs on the
    # thread that runs the worker. A worker that died before this call is caught by the ppid check.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)


def serve(connection: Connection, config: PipelineConfig) -> None:
    """Entry point of the second process."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_process()
    logging.basicConfig(
        level=config.loglevel, format="%(asctime)s %(levelname)s %(name)s [pipeline process]: %(message)s"
    )
    settings, policy = config.settings, config.policy
    metrics.zero_known_series(list(settings.input_topics), [rule.id for rule in policy.rules])
    store = AuditStore(settings.resolved_clickhouse_url, policy, config.chain_key)
    try:
        store.connect()
    except StoreError as exc:
        connection.send(("failed", None, _portable(exc)))
        connection.close()
        return
    sink = ClickHouseSink(store, settings.insert_retry_max_seconds)
    try:
        _Server(connection, settings, policy, sink).run()
    finally:
        sink.close()
        connection.close()


class _Server:
    def __init__(
        self, connection: Connection, settings: Settings, policy: Policy, sink: ClickHouseSink
    ) -> None:
        self.connection = connection
        self.sink = sink
        self._send_lock = threading.Lock()
        self.processors = {
            processor.kind: processor
            for processor in batch_processors(settings, policy, _NoForwarding(), sink)
        }
        self.loop = asyncio.new_event_loop()
        self.closing: asyncio.Future[None] = self.loop.create_future()
        self.tasks: set[asyncio.Task[None]] = set()

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        threading.Thread(target=self._read, name="pipeline-requests", daemon=True).start()
        self.send(("ready", None, None))
        try:
            self.loop.run_until_complete(self._until_closed())
        finally:
            self.loop.close()

    async def _until_closed(self) -> None:
        await self.closing
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            with self._send_lock:
                self.connection.send(message)
        except (OSError, ValueError) as exc:
            log.error("cannot answer the worker: %s", exc)

    def _close(self) -> None:
        if not self.closing.done():
            self.closing.set_result(None)

    def _read(self) -> None:
        while True:
            try:
                op, ident, *args = self.connection.recv()
            except (EOFError, OSError):
                log.warning("the worker closed the connection; finishing the batches in flight")
                self.loop.call_soon_threadsafe(self._close)
                return
            if op == "batch":
                self.loop.call_soon_threadsafe(self._start_batch, ident, *args)
            elif op == "metrics":
                self.send(("reply", ident, (list(metrics.REGISTRY.collect()), None)))
            elif op == "report":
                self._on_store_thread(ident, self.sink.query_blocking, *args)
            elif op == "verify":
                self._on_store_thread(ident, verify_store, self.sink.store)
            elif op == "stop_writes":
                self.sink.stop()
            elif op == "close":
                self.loop.call_soon_threadsafe(self._close)
                return
            else:
                log.error("unknown request from the worker: %r", op)

    def _on_store_thread(self, ident: int, function: Any, *args: Any) -> None:
        def reply(future: concurrent.futures.Future[Any]) -> None:
            error = future.exception()
            answer = None if error is not None else future.result()
            self.send(("reply", ident, (answer, None if error is None else _portable(error))))

        self.sink.executor.submit(function, *args).add_done_callback(reply)

    def _start_batch(self, ident: int, *columns: Any) -> None:
        task = self.loop.create_task(self._batch(ident, *columns))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _batch(
        self,
        ident: int,
        kind: str,
        topics: Sequence[str],
        partitions: Sequence[int],
        offsets: Sequence[int],
        values: Sequence[bytes | None],
        timestamps: Sequence[int | None],
    ) -> None:
        processor = self.processors[kind]
        messages = list(
            map(
                InboundMessage._make,
                zip(topics, partitions, offsets, itertools.repeat(None), values, timestamps),
            )
        )
        try:
            decided = processor.decide(messages)
        except Exception as exc:
            self.send(("failed", ident, _portable(exc)))
            return
        self.send(("routes", ident, decided.routes))
        try:
            result = await processor.write(decided)
        except Exception as exc:
            self.send(("failed", ident, _portable(exc)))
            return
        self.send(("done", ident, result))
