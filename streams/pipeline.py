"""The per-batch pipeline, composed: decode → validate → decide → route → write. Framework-independent.

The steps live in their own modules (`decide`: decode, validate, decide and route in one loop;
`route`: the decision header and forwarding; `deadletter`: bad records and their limit; `measure`:
the metrics). Here they are put together twice:

- `BatchProcessor` decides and writes one kind's batches. It needs no publisher: in the two-process
  mode it runs in the second process (`streams.pipeline_server`), which never forwards.
- `LocalPipeline` is the worker's runner in the one-process mode: it decides with a `BatchProcessor`
  and forwards while the processor writes. `RemotePipeline` (`streams.pipeline_process`) is the same
  runner when the processor is in the second process. Both are what the Faust agent runs
  (`streams.app.BatchRunner`).

A runner's `process(messages)` returns only when everything the batch produced is durable: its audit
rows are in the store, its allowed and blocked events are on the gate's topics, its invalid records
are on the dead-letter topic. The agent acknowledges the batch's offsets only after that (and then
Faust commits them), so a crash at any point means the batch is read again, never lost; the store
recognises rows it already holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from flowaudit.domain.codec import AvroCodec
from flowaudit.domain.consent import ConsentLedger
from flowaudit.domain.kinds import CONSENT_ROLE, INPUT_KINDS
from flowaudit.domain.ledger import StreamLedger
from flowaudit.domain.policy import Policy
from flowaudit.schemas import SCHEMA_DIR
from flowaudit.sinks.audit import AuditRecord
from flowaudit.streams.consents import ConsentProcessor, ConsentSink
from flowaudit.streams.deadletter import InvalidRatioGuard
from flowaudit.streams.decide import BatchDecider, DecidedBatch
from flowaudit.streams.measure import BatchMetrics
from flowaudit.streams.messages import BatchResult, InboundMessage
from flowaudit.streams.route import Publisher, Routes, Topics, forward_while_writing, publish_checkpoints


class AuditSink(Protocol):
    async def write(self, records: Sequence[AuditRecord]) -> tuple[int, int]:
        """Make the records durable; return (rows written, rows already present). Retries inside."""

    def latest_checkpoints(self, chains: Sequence[str]) -> list[str]:
        """The latest durable signed checkpoint of each chain that has one (none: no Merkle log)."""


class BatchProcessor:
    """Decides and writes one event kind's batches: pure CPU, except the awaited write.

    `decide(messages)` is the decide step (`streams.decide`): it blocks on nothing and may raise
    InvalidRatioExceeded, in which case nothing of the batch may be written or forwarded.
    `write(decided)` returns once the batch's audit rows are durable; it waits (back-pressure) for as
    long as the sink retries a store that is down, and raises if the sink gives up. Then it counts the
    batch's metrics (all but forwarding, which the forwarding process counts).
    """

    def __init__(
        self,
        kind: str,
        policy: Policy,
        codec: AvroCodec,
        sink: AuditSink,
        guard: InvalidRatioGuard,
        consents: ConsentLedger | None = None,
    ) -> None:
        self.kind = kind
        self.sink = sink
        self.decider = BatchDecider(kind, policy, codec, guard, consents)
        self.metrics = BatchMetrics(kind, policy)

    def decide(self, messages: Sequence[InboundMessage]) -> DecidedBatch:
        return self.decider.decide(messages)

    async def write(self, decided: DecidedBatch) -> BatchResult:
        result = decided.result(*await self.sink.write(decided.records))
        chains = list(dict.fromkeys(record.chain_id for record in decided.records))
        result.checkpoints = tuple(self.sink.latest_checkpoints(chains))
        self.metrics.count(decided, result)
        return result


class KindProcessor(Protocol):
    """What a runner drives for one input kind: `BatchProcessor` (flows) or `ConsentProcessor`."""

    kind: str

    def decide(self, messages: Sequence[InboundMessage]) -> Decided: ...

    async def write(self, decided: Any) -> BatchResult: ...


class Decided(Protocol):
    """A decided batch, as the runners read it: where each record goes."""

    @property
    def routes(self) -> Routes: ...


class LocalPipeline:
    """The one-process runner of one kind: decide, then forward while the audit rows are written."""

    def __init__(self, processor: KindProcessor, publisher: Publisher, topics: Topics) -> None:
        self.kind = processor.kind
        self.processor = processor
        self.publisher = publisher
        self.topics = topics

    async def process(self, messages: Sequence[InboundMessage]) -> BatchResult:
        decided = self.processor.decide(messages)  # may raise: nothing written, nothing forwarded
        result = await forward_while_writing(
            self.publisher, self.topics, messages, decided.routes, self.processor.write(decided)
        )
        await publish_checkpoints(self.publisher, self.topics, result)
        return result


class PipelineSink(AuditSink, ConsentSink, Protocol):
    """The store as the processors of every input kind write to it (`sinks.writer.ClickHouseSink`)."""


def batch_processors(
    kinds: Sequence[str],
    policy: Policy,
    sink: PipelineSink,
    invalid_ratio_limit: float,
    invalid_ratio_window: int,
    ledger: StreamLedger | None = None,
) -> list[KindProcessor]:
    """One processor per input kind (each with its own invalid-ratio guard), sharing codec, sink and
    the consent ledger: the consent kind's processor writes to the ledger, the flow kinds' decide with
    it. Which processor a kind gets is its role in the input-kind table (`domain.kinds.INPUT_KINDS`)."""
    codec = AvroCodec(SCHEMA_DIR)
    ledger = ledger if ledger is not None else StreamLedger()

    def processor(kind: str) -> KindProcessor:
        guard = InvalidRatioGuard(invalid_ratio_limit, invalid_ratio_window)
        if INPUT_KINDS[kind].role == CONSENT_ROLE:
            return ConsentProcessor(policy, codec, sink, guard, ledger)
        return BatchProcessor(kind, policy, codec, sink, guard, ledger)

    return [processor(kind) for kind in kinds]
