"""The pipeline in a second process, the worker's side: start it, hand it batches, forward their routes.

Why a second process: everything Python in one process shares one GIL. In one process the worker kept
only ~1.2 of the 2 cores of the CI machine busy (bench/stream.py): Faust's own per-event work and this
project's pipeline took turns on one interpreter, while the ClickHouse engine alone ran outside it.
Here the worker's process keeps Faust (consuming, forwarding, acknowledging, committing) and a second
process (`streams.pipeline_server`) owns the decision core and the audit store.

`PipelineProcess` spawns it and speaks the pipe's declared messages (`streams.pipe`): a batch goes as
`SubmitBatch`; its `Routes` come back as soon as it is decided, so the worker forwards while the second
process writes; its `BatchResult` comes back once the audit rows are durable. `RemotePipeline` is the
agent's runner on top (`streams.app.BatchRunner`): it acknowledges nothing before both, as in one
process. A batch that fails in the second process (the invalid-ratio guard, a store that cannot be
written) fails in the worker; if the second process dies, every pending batch fails and the worker
stops without acknowledging them.

The second process also answers control requests: its metrics (merged into the worker's `/metrics`
by `PipelineMetrics`), reports and verify (run on the store's thread, as in one process), and the
stop of insert retries at shutdown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, assert_never

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from flowaudit.common import metrics
from flowaudit.common.redact import mask_url
from flowaudit.domain.ledger import Entry
from flowaudit.sinks.clickhouse import StoreError
from flowaudit.sinks.merkle_verify import VerifyOptions
from flowaudit.sinks.verify import VerifyReport
from flowaudit.streams.messages import BatchResult, InboundMessage
from flowaudit.streams.pipe import (
    ChainsRequest,
    Close,
    Failed,
    LoadLedger,
    MetricsRequest,
    PipelineConfig,
    PipelineProcessError,
    Ready,
    Reply,
    ReportRequest,
    Request,
    Routed,
    StartFailed,
    StopWrites,
    SubmitBatch,
    ToPipeline,
    ToWorker,
    VerifyRequest,
    Written,
    is_startup,
    is_to_worker,
)
from flowaudit.streams.pipeline_server import serve
from flowaudit.streams.route import Publisher, Routes, Topics, forward_while_writing, publish_checkpoints

# consent records per LoadLedger message (~100 bytes each pickled: ~10 MB a message)
LEDGER_CHUNK = 100_000

log = logging.getLogger(__name__)


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

    Raises StoreError (as `AuditStore.connect` does) when the second process cannot open the store,
    PipelineProcessError when it does not start otherwise. `submit` is called on the event loop;
    `request` and everything built on it from any thread. Answers are read by a thread of its own.
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
        # called (on the reader thread) when the process dies unasked: the worker must stop then,
        # not at its next batch, which may never come
        self.on_death: Callable[[PipelineProcessError], None] | None = None
        self._masked_url = mask_url(config.store_url) or ""
        self._await_ready(start_timeout)
        self._reader = threading.Thread(target=self._read, name="pipeline-results", daemon=True)
        self._reader.start()

    def _await_ready(self, timeout: float) -> None:
        try:
            if not self._connection.poll(timeout):
                raise PipelineProcessError(f"the pipeline process did not start within {timeout:.0f} s")
            message = self._connection.recv()
            if not is_startup(message):
                raise PipelineProcessError(f"unexpected first message {message!r}")
        except (EOFError, OSError, PipelineProcessError) as exc:
            self._stop_process(5.0)
            raise PipelineProcessError(
                f"the pipeline process did not start (exit code {self.process.exitcode}): {exc}"
            ) from exc
        match message:
            case Ready():
                pass
            case StartFailed(error=error):
                self._stop_process(30.0)
                raise error if isinstance(error, StoreError) else PipelineProcessError(str(error))
            case _:
                assert_never(message)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def masked_url(self) -> str:
        """The URL of the store the second process holds, password masked."""
        return self._masked_url

    def _send(self, message: ToPipeline) -> None:
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
        try:
            self._send(SubmitBatch.of(ident, kind, messages))
        except PipelineProcessError:
            with self._lock:
                self._batches.pop(ident, None)
            raise
        return pending.routes, pending.result

    def request(self, make: Callable[[int], Request]) -> concurrent.futures.Future[Any]:
        """A control request, made from its ident (metrics, report, verify), answered from any thread."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            ident = next(self._ids)
            self._requests[ident] = future
        try:
            self._send(make(ident))
        except PipelineProcessError as exc:
            with self._lock:
                self._requests.pop(ident, None)
            future.set_exception(exc)
        return future

    def metric_families(self, timeout: float) -> list[Metric]:
        families: list[Metric] = self.request(MetricsRequest).result(timeout)
        return families

    async def query(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        result: tuple[list[str], list[tuple[Any, ...]]] = await asyncio.wrap_future(
            self.request(lambda ident: ReportRequest(ident, sql, parameters))
        )
        return result

    async def verify(self, options: VerifyOptions | None = None) -> VerifyReport:
        chosen = options or VerifyOptions()
        report: VerifyReport = await asyncio.wrap_future(
            self.request(lambda ident: VerifyRequest(ident, chosen))
        )
        return report

    async def take_chains(self, chains: Sequence[str]) -> None:
        await asyncio.wrap_future(self.request(lambda ident: ChainsRequest(ident, tuple(chains), True)))

    async def release_chains(self, chains: Sequence[str]) -> None:
        await asyncio.wrap_future(self.request(lambda ident: ChainsRequest(ident, tuple(chains), False)))

    async def load_ledger(self, records: Sequence[Entry]) -> int:
        """Replace the second process's consent ledger with `records`, in chunks (a table of millions
        of consents is not pickled in one message); returns the ledger's size once loaded."""
        size = 0
        for start in range(0, max(1, len(records)), LEDGER_CHUNK):
            chunk = tuple(records[start : start + LEDGER_CHUNK])
            size = await asyncio.wrap_future(self.request(functools.partial(_load, chunk, start == 0)))
        return size

    def stop(self) -> None:
        """Stop retrying failed inserts (shutdown): batches waiting on a down store then fail."""
        with contextlib.suppress(PipelineProcessError):
            self._send(StopWrites())

    def close(self, timeout: float = 120.0) -> None:
        """Let the second process finish its writes, close the store and exit."""
        self._closing = True
        self.stop()
        with contextlib.suppress(PipelineProcessError):
            self._send(Close())
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
                message = self._connection.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # an answer that cannot be unpickled: the protocol is broken
                log.critical("unreadable answer from the pipeline process: %r", exc)
                break
            if not is_to_worker(message):  # the protocol is broken too: fail what waits, do not hang
                log.critical("unexpected answer from the pipeline process: %r", message)
                break
            self._dispatch(message)
        self._fail_everything()

    def _dispatch(self, message: ToWorker) -> None:
        """Settle what waits for one answer (on the reader thread)."""
        match message:
            case Reply(ident=ident, value=value, error=error):
                with self._lock:
                    request = self._requests.pop(ident, None)
                if request is not None:
                    _settle(request, value, error)
            case Routed(ident=ident, routes=routes):
                with self._lock:
                    pending = self._batches.get(ident)  # stays: its result is still to come
                if pending is not None:
                    pending.routed = True
                    self._resolve(pending, pending.routes, routes, None)
            case Written(ident=ident, result=result):
                with self._lock:
                    pending = self._batches.pop(ident, None)
                if pending is not None:
                    self._resolve(pending, pending.result, result, None)
            case Failed(ident=ident, error=error):  # before its routes were sent (not decided) or after
                with self._lock:
                    pending = self._batches.pop(ident, None)
                if pending is not None:
                    self._fail(pending, error)
            case _:
                assert_never(message)

    def _fail_everything(self) -> None:
        """The pipe is closed: fail every pending batch and request, and every later call."""
        if self._closing:  # `close` joins the process; a second join from here would race with it
            self._error = PipelineProcessError("the pipeline process is stopped")
        else:
            multiprocessing.connection.wait([self.process.sentinel], timeout=1.0)
            self._error = PipelineProcessError(
                f"the pipeline process died (exit code {self.process.exitcode})"
            )
            log.critical("%s", self._error)
            if self.on_death is not None:  # stop the worker now, not at its next batch
                self.on_death(self._error)
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


def _load(records: tuple[Entry, ...], replace: bool, ident: int) -> LoadLedger:
    return LoadLedger(ident, records, replace)


class RemotePipeline:
    """The worker's runner of one kind when its `BatchProcessor` is in the second process.

    Like `LocalPipeline` (streams.pipeline): forwards once the batch is decided, while the second
    process writes its audit rows, and returns once both are durable.
    """

    def __init__(self, kind: str, pipeline: PipelineProcess, publisher: Publisher, topics: Topics) -> None:
        self.kind = kind
        self.pipeline = pipeline
        self.publisher = publisher
        self.topics = topics

    async def process(self, messages: Sequence[InboundMessage]) -> BatchResult:
        routes_ready, written = self.pipeline.submit(self.kind, messages)
        # retrieve a late failure of the write even if this never gets to await it (no "never retrieved")
        written.add_done_callback(lambda future: future.cancelled() or future.exception())
        routes = await routes_ready
        result = await forward_while_writing(self.publisher, self.topics, messages, routes, written)
        await publish_checkpoints(self.publisher, self.topics, result)
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
