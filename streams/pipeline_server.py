"""The pipeline process's side: decide and write the audit store, answer the worker over the pipe.

`serve(connection, config)` is the process's entry point (spawned by `streams.pipeline_process`). It
opens the store, answers `Ready` (or `StartFailed`), then serves `ToPipeline` messages until `Close`
or until the worker's end of the pipe closes, and finishes the batches in flight before it returns.
Per batch it sends `Routed` as soon as the batch is decided and `Written` once its audit rows are
durable, or `Failed`: the worker acknowledges nothing that was not written. It never forwards.

It ignores SIGINT/SIGTERM (the worker decides when it stops) and is killed by the kernel if the
worker's process dies (a crash of the worker is a crash of both).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from multiprocessing.connection import Connection
from typing import Any, assert_never

from flowaudit.common import metrics
from flowaudit.common.tuning import tune_process
from flowaudit.domain.checkpoint import parse_skey
from flowaudit.domain.ledger import Entry, StreamLedger
from flowaudit.sinks.clickhouse import AuditStore, StoreError
from flowaudit.sinks.writer import ClickHouseSink
from flowaudit.streams.measure import flow_kinds, zero_policy_series
from flowaudit.streams.pipe import (
    ChainsRequest,
    Close,
    Failed,
    LoadLedger,
    MetricsRequest,
    PipelineConfig,
    Ready,
    Reply,
    ReportRequest,
    Routed,
    StartFailed,
    StopWrites,
    SubmitBatch,
    ToPipeline,
    ToWorker,
    VerifyRequest,
    Written,
    is_to_pipeline,
    portable,
)
from flowaudit.streams.pipeline import KindProcessor, batch_processors

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


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
    policy = config.policy
    zero_policy_series(flow_kinds(config.kinds), policy)
    signer = parse_skey(config.checkpoint_key) if config.checkpoint_key else None
    store = AuditStore(config.store_url, policy, config.chain_key, log_signer=signer)
    try:
        store.connect()
    except StoreError as exc:
        connection.send(StartFailed(portable(exc)))
        connection.close()
        return
    sink = ClickHouseSink(
        store, config.insert_retry_max_seconds, consent_delay_seconds=config.consent_write_delay_seconds
    )
    ledger = StreamLedger(config.consent_max_periods)
    processors = batch_processors(
        config.kinds, policy, sink, config.invalid_ratio_limit, config.invalid_ratio_window, ledger
    )
    try:
        _Server(connection, sink, processors, ledger).run()
    finally:
        sink.close()
        connection.close()


class _Server:
    """Reads the pipe on a thread of its own; batches run as tasks on this process's event loop."""

    def __init__(
        self,
        connection: Connection,
        sink: ClickHouseSink,
        processors: list[KindProcessor],
        ledger: StreamLedger,
    ) -> None:
        self.connection = connection
        self.sink = sink
        self.ledger = ledger
        self._send_lock = threading.Lock()
        self.processors = {processor.kind: processor for processor in processors}
        self.loop = asyncio.new_event_loop()
        self.closing: asyncio.Future[None] = self.loop.create_future()
        self.tasks: set[asyncio.Task[None]] = set()

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        threading.Thread(target=self._read, name="pipeline-requests", daemon=True).start()
        self.send(Ready())
        try:
            self.loop.run_until_complete(self._until_closed())
        finally:
            self.loop.close()

    async def _until_closed(self) -> None:
        await self.closing
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def send(self, message: ToWorker | Ready) -> None:
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
                message = self.connection.recv()
            except (EOFError, OSError):
                log.warning("the worker closed the connection; finishing the batches in flight")
                self.loop.call_soon_threadsafe(self._close)
                return
            if not is_to_pipeline(message):
                log.error("unknown request from the worker: %r", message)
            elif not self._dispatch(message):
                return

    def _dispatch(self, message: ToPipeline) -> bool:
        """Act on one message from the worker; False after the last one (`Close`)."""
        match message:
            case SubmitBatch():
                self.loop.call_soon_threadsafe(self._start_batch, message)
            case MetricsRequest(ident=ident):
                self.send(Reply(ident, list(metrics.REGISTRY.collect()), None))
            case ReportRequest(ident=ident, sql=sql, parameters=parameters):
                self._on_store_thread(ident, self.sink.query_blocking, sql, parameters)
            case ChainsRequest(ident=ident, chains=chains, take=take):
                change = self.sink.take_chains if take else self.sink.release_chains
                self._on_loop(ident, lambda: change(chains))
            case VerifyRequest(ident=ident, options=options):
                # in windows on the store's thread (ClickHouseSink.verify): inserts keep going
                self._on_loop(ident, lambda: self.sink.verify(options))
            case LoadLedger(ident=ident, records=records, replace=replace):
                # on the loop, as the batches are decided there: those submitted later read it
                self._on_loop(ident, lambda: self._load_ledger(records, replace))
            case StopWrites():
                self.sink.stop()
            case Close():
                self.loop.call_soon_threadsafe(self._close)
                return False
            case _:
                assert_never(message)
        return True

    async def _load_ledger(self, records: Sequence[Entry], replace: bool) -> int:
        self.ledger.load(records, replace=replace)
        metrics.CONSENT_LEDGER_SIZE.set(len(self.ledger))
        return len(self.ledger)

    def _on_store_thread(self, ident: int, function: Callable[..., Any], *args: Any) -> None:
        def reply(future: concurrent.futures.Future[Any]) -> None:
            error = future.exception()
            if error is not None:
                self.send(Reply(ident, None, portable(error)))
            else:
                self.send(Reply(ident, future.result(), None))

        self.sink.executor.submit(function, *args).add_done_callback(reply)

    def _on_loop(self, ident: int, coroutine: Callable[[], Awaitable[Any]]) -> None:
        async def answer() -> None:
            try:
                value = await coroutine()
            except Exception as exc:
                self.send(Reply(ident, None, portable(exc)))
            else:
                self.send(Reply(ident, value, None))

        self.loop.call_soon_threadsafe(self._start_task, answer())

    def _start_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _start_batch(self, batch: SubmitBatch) -> None:
        self._start_task(self._batch(batch))

    async def _batch(self, batch: SubmitBatch) -> None:
        processor = self.processors[batch.kind]
        try:
            decided = processor.decide(batch.messages())
        except Exception as exc:
            self.send(Failed(batch.ident, portable(exc)))
            return
        self.send(Routed(batch.ident, decided.routes))
        try:
            result = await processor.write(decided)
        except Exception as exc:
            self.send(Failed(batch.ident, portable(exc)))
            return
        self.send(Written(batch.ident, result))
