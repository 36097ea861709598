"""The Faust application: one agent per input topic, each running the batch pipeline.

Each agent reads batches with `Stream.noack_take` (by size and by time) and acknowledges a
batch's events only after its runner's `process` returned for it (`LocalPipeline`, or
`RemotePipeline` when the pipeline runs in a second process), i.e. after its audit rows, forwarded
events and dead letters are durable. Up to two batches per agent are in flight: the next
one is decided while the previous one is written. Faust commits acknowledged offsets. A batch
whose processing failed is not acknowledged. The worker stops (the invalid-ratio guard, or a
store that cannot be written at shutdown), and the batch is read again after a restart.

The consent topic's agent runs the same loop over the consent kind's processor
(`streams.consents`); once a consent batch is durable in the store, and before it is acknowledged,
the records it changed go into the consent ledger's Faust table (keyed by user_id, changelogged in
Kafka). When Faust has recovered the table (start-up, rebalance), the whole table is loaded into the
ledger the flows are decided with (`LedgerLoader`), before any input partition is resumed.

On SIGTERM/SIGINT Faust cancels the agents. The batch in flight is shielded from the cancellation
and finished (and then acknowledged) before the agent lets go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import faust
from faust.types import TP

from flowaudit.common import metrics
from flowaudit.common.settings import Settings
from flowaudit.domain.kinds import CONSENT_ROLE, INPUT_KINDS
from flowaudit.domain.ledger import Entry, StreamLedger, records_of, table_value
from flowaudit.domain.policy import Policy
from flowaudit.sinks.audit import chain_id_for
from flowaudit.sinks.merkle_verify import VerifyOptions
from flowaudit.sinks.verify import VerifyReport
from flowaudit.streams.consumer import Transport as ConsumerTransport
from flowaudit.streams.consumer import WholeSeekConsumer
from flowaudit.streams.deadletter import InvalidRatioExceeded
from flowaudit.streams.messages import BatchResult, InboundMessage
from flowaudit.streams.web import StoreViews, WebGuard, add_web_views

log = logging.getLogger(__name__)

BatchObserver = Callable[[str, BatchResult], None]


class BatchRunner(Protocol):
    """One kind's pipeline as the agent sees it: `LocalPipeline` (streams.pipeline), or
    `RemotePipeline` when the pipeline runs in the second process (streams.pipeline_process).

    `process` returns only once the batch's audit rows, forwarded events and dead letters are durable
    (then the agent acknowledges it), and raises if any of them failed (then it does not)."""

    kind: str

    async def process(self, messages: Sequence[InboundMessage]) -> BatchResult: ...


class AuditStoreOwner(Protocol):
    """What holds the audit store for this worker (`ClickHouseSink`, or `PipelineProcess` when the
    store is in the second process): stops insert retries at shutdown, answers reports and verify
    (web views for `flowaudit report|verify`), and moves chains with their partitions."""

    def stop(self) -> None: ...

    async def take_chains(self, chains: Sequence[str]) -> None: ...

    async def release_chains(self, chains: Sequence[str]) -> None: ...

    @property
    def masked_url(self) -> str: ...

    async def query(
        self, sql: str, parameters: dict[str, Any]
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    async def verify(self, options: VerifyOptions | None = None) -> VerifyReport: ...


class LedgerLoader(Protocol):
    """Where the consent ledger the flows are decided with lives: `LocalLedger` (one process), or
    `PipelineProcess` (the second process). Loaded from the Faust table once it is recovered."""

    async def load_ledger(self, records: Sequence[Entry]) -> int: ...


class LocalLedger:
    """The one-process `LedgerLoader`: the ledger object the processors share."""

    def __init__(self, ledger: StreamLedger) -> None:
        self.ledger = ledger

    async def load_ledger(self, records: Sequence[Entry]) -> int:
        self.ledger.load(records)
        metrics.CONSENT_LEDGER_SIZE.set(len(self.ledger))
        return len(self.ledger)


# The Faust table of the consent ledger; its changelog topic is `<consumer group>-<name>-changelog`.
LEDGER_TABLE = "consent-ledger"


def ledger_changelog_topic(consumer_group: str) -> str:
    """The changelog topic of the consent ledger's table (created with the input topics)."""
    return f"{consumer_group}-{LEDGER_TABLE}-changelog"


def input_topic(settings: Settings, kind: str) -> str:
    """The topic an input kind is consumed from (setting `topic_<kind>`, flows and consents alike)."""
    topic: str = getattr(settings, INPUT_KINDS[kind].topic_setting)
    return topic


class FlowauditApp(faust.App):
    """A Faust app that also owns the gate's publisher and the audit sink, and closes them last."""

    publisher: Any = None
    store_owner: AuditStoreOwner | None = None
    fatal_error: BaseException | None = None

    def _new_transport(self) -> Any:
        # Faust's aiokafka transport, with the consumer whose seek after a rebalance loses nothing
        return ConsumerTransport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        # Called before the agents are stopped: a sink retrying against a store that is down gives up
        # after its current attempt, so the batch in flight ends (unacknowledged) and the worker stops.
        # A store that works is not affected: the batch in flight is written and acknowledged.
        if self.store_owner is not None:
            self.store_owner.stop()
        await super().on_stop()

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        if self.publisher is not None and hasattr(self.publisher, "stop"):
            await self.publisher.stop()


def _inbound(event: Any) -> InboundMessage:
    message = event.message
    timestamp = message.timestamp
    return InboundMessage(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value,
        int(timestamp * 1000) if timestamp else None,
    )


def create_app(
    settings: Settings,
    bootstrap: str,
    processors: Sequence[BatchRunner],
    publisher: Any,
    store_owner: AuditStoreOwner,
    *,
    observer: BatchObserver | None = None,
    web_guard: WebGuard | None = None,
    web_views: StoreViews | None = None,
    ledger: LedgerLoader | None = None,
    ledger_partitions: int | None = None,
    policy: Policy | None = None,
) -> FlowauditApp:
    """The Faust app: an agent per processor (its kind's input topic); with a `ledger`, the consent
    ledger's Faust table (`ledger_partitions`: the consent topic's); with a `web_guard`, the web API
    over the store (`streams.web`)."""
    app = FlowauditApp(
        settings.consumer_group,
        broker=f"kafka://{bootstrap}",
        topic_allow_declare=False,
        topic_disable_leader=True,
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        web_enabled=web_guard is not None and settings.web_port > 0,
        web_port=settings.web_port or 6066,  # Faust validates the port even when the web is off
        web_bind=settings.web_bind,
        web_host=settings.web_bind,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_seconds,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_seconds / 3),
        broker_commit_every=10_000,
        stream_buffer_maxsize=max(4096, settings.batch_max_rows * 2),
        producer_acks=-1,
        autodiscover=False,
        # Acks happen right after a batch is durable; a batch left unacknowledged at shutdown is so on
        # purpose (to be read again), so the consumer must not wait for it.
        stream_wait_empty=False,
    )
    app.publisher = publisher
    app.store_owner = store_owner
    table = _consent_table(app, ledger, ledger_partitions) if ledger is not None else None
    for processor in processors:
        topic_name = input_topic(settings, processor.kind)
        topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw", partitions=None)
        consents = INPUT_KINDS[processor.kind].role == CONSENT_ROLE
        on_durable = _table_writer(table) if consents else None
        in_flight = consent_batches_in_flight(settings) if consents else MAX_BATCHES_IN_FLIGHT
        agent = _make_agent(app, processor, settings, observer, on_durable, in_flight)
        app.agent(topic, name=f"flowaudit.{processor.kind}")(agent)

    inputs = frozenset(input_topic(settings, processor.kind) for processor in processors)
    _chains_follow_partitions(app, store_owner, inputs)
    _reread_holes_every(app, HOLE_CHECK_SECONDS)
    if web_guard is not None and settings.web_port > 0:
        add_web_views(app, web_views or store_owner, web_guard, policy, settings.witness_state)
    return app


def _consent_table(app: FlowauditApp, ledger: LedgerLoader, partitions: int | None) -> Any:
    """The consent ledger's durable copy: a Faust table keyed by user_id, changelogged in Kafka.

    Its value per user is `domain.ledger.table_value` (JSON). Faust recovers it from the changelog
    when partitions are assigned (start-up, rebalance) and resumes the input partitions only after
    the recovery callbacks: the ledger the flows are decided with is loaded from it before any
    flow of the new assignment is read.
    """
    table = app.Table(
        LEDGER_TABLE,
        default=None,
        partitions=partitions,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
        help="consent ledger: per user_id, consent_id -> [purpose, periods]",
    )

    async def recovered() -> None:
        records: list[Entry] = []
        for user_id, value in table.data.items():
            try:
                records.extend(records_of(user_id, value))
            except ValueError as exc:  # not written by this code: keep the rest of the ledger
                log.error("consent ledger: %s (entry skipped)", exc)
        size = await ledger.load_ledger(records)
        log.info("consent ledger recovered from its changelog: %d consents", size)

    table.on_recover(recovered)
    return table


def _table_writer(table: Any) -> Callable[[BatchResult], None]:
    """Put a durable consent batch's ledger records in the table, each on its event's partition (the
    user's: producers key by user_id), before the batch is acknowledged. Faust flushes the changelog
    before it commits offsets, so a committed consent is in the changelog."""

    def write(result: BatchResult) -> None:
        for update in result.ledger_updates:
            record = update.record
            value = dict(table.data.get(record.user_id) or {})
            value.update(table_value([(record, update.offset)]))
            table.data[record.user_id] = value
            table.send_changelog(update.partition, record.user_id, value)

    return write


def crash_from_thread(app: FlowauditApp, error: BaseException) -> None:
    """Stop the worker (exit 3) from another thread, e.g. when its pipeline process died."""
    app.fatal_error = app.fatal_error or error
    with contextlib.suppress(RuntimeError):  # the loop is already closed: the worker is stopping
        asyncio.run_coroutine_threadsafe(app.crash(error), app.loop)


# how often the consumer looks for partitions whose next commit offset is stuck (streams.offsets)
HOLE_CHECK_SECONDS = 2.0


def _reread_holes_every(app: FlowauditApp, interval: float) -> None:
    """A timer on every worker: a partition whose next commit offset was read but stays
    unacknowledged while later offsets are acknowledged is read again from it
    (`streams.consumer.WholeSeekConsumer.reread_holes`). Not during a rebalance: its seek reads
    every partition again from its committed offset anyway."""

    async def reread_holes() -> None:
        consumer = app.consumer
        if isinstance(consumer, WholeSeekConsumer) and not app.rebalancing:
            try:
                await consumer.reread_holes(time.monotonic())
            except Exception:  # a look that fails is tried at the next tick; it never stops the worker
                log.warning("looking at unacknowledged offsets failed", exc_info=True)

    app.timer(interval, name="flowaudit.reread_holes")(reread_holes)


def _chains_follow_partitions(app: FlowauditApp, store: AuditStoreOwner, inputs: frozenset[str]) -> None:
    """One writer per chain, across workers: a chain is a partition's, and moves with it.

    On revocation (Faust waits for this before the worker rejoins the group, so before the
    partition's new owner starts) every insert already handed to the store finishes, and records of
    those chains handed over later are not written. On assignment the chains' heads are read from
    the store, where the previous owner left them, before any batch of them is written.
    """

    def chains(partitions: set[TP]) -> list[str]:
        return sorted(chain_id_for(tp.topic, tp.partition) for tp in partitions if tp.topic in inputs)

    async def revoked(sender: Any, *args: Any, signal: Any, **_: Any) -> None:
        if moved := chains(args[0]):  # the revoked partitions
            await store.release_chains(moved)

    async def assigned(sender: Any, *args: Any, signal: Any, **_: Any) -> None:
        if taken := chains(args[0]):  # the whole new assignment
            await store.take_chains(taken)

    # mode's handler type does not admit a coroutine function with this signature; mode calls it
    # as receiver(sender, partitions, signal=...) and awaits what it returns (mode.signals.Signal.send)
    app.on_partitions_revoked.connect(cast(Any, revoked))
    app.on_partitions_assigned.connect(cast(Any, assigned))


# An agent decides its next batch while the previous one is being written and forwarded. Writes stay
# in order (one store thread, first in, first out), and each batch is acknowledged when durable.
MAX_BATCHES_IN_FLIGHT = 2


def consent_batches_in_flight(settings: Settings) -> int:
    """The consent agent's: its batches wait in the sink to be written together
    (FLOWAUDIT_CONSENT_WRITE_DELAY_SECONDS), and it keeps reading and applying consents meanwhile,
    so that the wait does not hold the ledger back."""
    waiting = math.ceil(settings.consent_write_delay_seconds / settings.batch_max_seconds)
    return MAX_BATCHES_IN_FLIGHT + waiting


def _make_agent(
    app: FlowauditApp,
    processor: BatchRunner,
    settings: Settings,
    observer: BatchObserver | None,
    on_durable: Callable[[BatchResult], None] | None = None,
    in_flight: int = MAX_BATCHES_IN_FLIGHT,
) -> Callable[[Any], Any]:
    async def agent(stream: Any) -> None:
        inflight: set[asyncio.Future[None]] = set()
        try:
            async for events in stream.noack_take(settings.batch_max_rows, within=settings.batch_max_seconds):
                if not events:
                    continue
                task = asyncio.ensure_future(_process_batch(app, processor, events, observer, on_durable))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                if len(inflight) >= in_flight:
                    await asyncio.wait(set(inflight), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if inflight:
                await asyncio.shield(asyncio.gather(*inflight, return_exceptions=True))

    agent.__name__ = f"process_{processor.kind}"
    return agent


async def _process_batch(
    app: FlowauditApp,
    processor: BatchRunner,
    events: Sequence[Any],
    observer: BatchObserver | None,
    on_durable: Callable[[BatchResult], None] | None = None,
) -> None:
    messages = [_inbound(event) for event in events]
    task = asyncio.ensure_future(processor.process(messages))
    try:
        result = await asyncio.shield(task)
    except asyncio.CancelledError:
        # Cancelled while shutting down: finish the batch in flight, then ack it.
        try:
            result = await task
        except Exception as exc:
            log.error(
                "batch of %d %s records not finished at shutdown; it will be read again: %s",
                len(events),
                processor.kind,
                exc,
            )
            raise asyncio.CancelledError() from exc
        if on_durable is not None:
            on_durable(result)
        _ack(app, events)
        raise
    except InvalidRatioExceeded as exc:
        log.critical("STOPPING: %s", exc)
        app.fatal_error = exc
        await app.crash(exc)
        return
    except Exception as exc:
        if app.should_stop:
            # A stop was asked for (SIGTERM) while the store was down: the batch is not acknowledged
            # and is read again after the restart. Nothing is lost, so the stop stays a clean one.
            log.warning(
                "batch of %d %s records not written before shutdown; it will be read again: %s",
                len(events),
                processor.kind,
                exc,
            )
            return
        log.critical("STOPPING: batch of %d %s records failed: %s", len(events), processor.kind, exc)
        app.fatal_error = exc
        await app.crash(exc)
        return
    if on_durable is not None:
        on_durable(result)
    _ack(app, events)
    _measure_lag(app, messages)
    if observer is not None:
        observer(processor.kind, result)


def _ack(app: FlowauditApp, events: Sequence[Any]) -> None:
    """Acknowledge the events of partitions this worker holds, fetched in the consumer group's
    current generation, unless a rebalance is under way.

    A rebalance revokes every partition; from then on the sink skips the records of their chains
    (released, `sinks.writer`), and whoever holds a partition next reads it again from its
    committed offset. An acknowledgement made during the rebalance (Faust commits while it revokes)
    or after it, of an event fetched before, could let the commit pass a record that was skipped,
    even on a partition assigned back to this worker: such events are left to be read again."""
    generation = app.consumer_generation_id
    if app.rebalancing:
        metrics.REBALANCE_REREADS.labels("during_rebalance").inc(len(events))
        log.info("%d events not acknowledged during a rebalance: they are read again", len(events))
        return
    assignment = app.consumer.assignment()
    stale = 0
    for event in events:
        message = event.message
        if message.generation_id != generation:
            stale += 1
        elif message.tp in assignment:
            event.ack()
    if stale:
        metrics.REBALANCE_REREADS.labels("earlier_generation").inc(stale)
        log.info("%d events fetched before the last rebalance left to be read again", stale)


def _measure_lag(app: FlowauditApp, messages: Sequence[InboundMessage]) -> None:
    last: dict[tuple[str, int], int] = {}
    for message in messages:
        last[(message.topic, message.partition)] = message.offset
    for (topic, partition), offset in last.items():
        try:
            highwater = app.consumer.highwater(TP(topic, partition))
        except Exception:  # lag is best effort: not every consumer state knows its highwater
            continue
        if highwater is not None:
            metrics.CONSUMER_LAG.labels(topic, str(partition)).set(max(0, highwater - offset - 1))
