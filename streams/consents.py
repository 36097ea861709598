"""The consent kind's batches: decode → validate → apply to the ledger → write the consent rows.

`ConsentProcessor` is the consent topic's counterpart of `streams.pipeline.BatchProcessor`, with the
same two steps, so both runners (`LocalPipeline`, and the second process) run it unchanged:

- `decide(messages)` decodes and validates each record (`domain.codec`, `domain.consent`); an invalid
  one becomes a dead letter, as a flow would. Each valid consent is applied to the stream's ledger
  (`domain.ledger.StreamLedger`) at once: the flow batches decided after this one read it (the
  consent topic and the flow topics are not ordered with each other; a flow read before the grant it
  cites finds no record and is flagged `consent-unverified`, never blocked: contract v2 §5).
  Consents are not forwarded to the gate's topics (they are not flows).
- `write(decided)` returns once the consent rows (and the withdrawal notices the store derives from
  them) are durable. Its `BatchResult.ledger_updates` are the records as they stand after the batch;
  the agent puts them in the Faust table (the ledger's durable copy, changelogged in Kafka) before it
  acknowledges the batch, so the changelog is flushed before the offsets are committed.

Applying a consent twice (a batch read again after a crash) changes nothing: an open grant is not
reopened and a closed period is not closed again, and the store recognises rows it already holds.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from flowaudit.common import metrics
from flowaudit.domain.codec import AvroCodec, DecodeError
from flowaudit.domain.consent import CONSENT_KIND, consent_from_avro
from flowaudit.domain.events import check_occurred_at
from flowaudit.domain.fields import InvalidEvent
from flowaudit.domain.ledger import LedgerUpdate, StreamLedger
from flowaudit.domain.policy import Policy
from flowaudit.sinks.consents import ConsentAuditRecord
from flowaudit.streams.deadletter import InvalidRatioGuard, dead_letter_headers
from flowaudit.streams.messages import BatchResult, Headers, InboundMessage
from flowaudit.streams.route import Routes


class ConsentSink(Protocol):
    async def write_consents(self, records: Sequence[ConsentAuditRecord]) -> tuple[int, int]:
        """Make the consent rows durable; return (rows written, rows already present)."""


@dataclass
class DecidedConsents:
    """A consent batch after decode, validate and apply: its rows and routes, nothing written yet."""

    consumed: int
    records: list[ConsentAuditRecord]
    updates: list[LedgerUpdate]
    routes: Routes  # dead letters only
    reasons: Counter[str]

    def result(self, written: int, replayed: int) -> BatchResult:
        return BatchResult(
            consumed=self.consumed,
            dead_lettered=len(self.routes.dead),
            written=written,
            replayed=replayed,
            dead_letter_reasons=dict(self.reasons),
            ledger_updates=tuple(self.updates),
        )


class ConsentProcessor:
    """Decides and writes the consent topic's batches (see the module's contract)."""

    kind = CONSENT_KIND

    def __init__(
        self,
        policy: Policy,
        codec: AvroCodec,
        sink: ConsentSink,
        guard: InvalidRatioGuard,
        ledger: StreamLedger,
    ) -> None:
        self.policy = policy
        self.codec = codec
        self.sink = sink
        self.guard = guard
        self.ledger = ledger

    def decide(self, messages: Sequence[InboundMessage]) -> DecidedConsents:
        """Decode, validate and apply a batch; raises InvalidRatioExceeded (then nothing is applied)."""
        kind, version, now_ms = self.kind, self.policy.version, int(time.time() * 1000)
        valid: list[ConsentAuditRecord] = []
        dead: list[tuple[int, Headers]] = []
        reasons: Counter[str] = Counter()
        for position, message in enumerate(messages):
            try:
                _, raw = self.codec.decode(message.value or b"", kind)
                event = consent_from_avro(raw, self.policy)
                check_occurred_at(event.occurred_at_ms, now_ms)
            except DecodeError as exc:
                dead.append((position, dead_letter_headers(message, kind, version, exc.reason, str(exc))))
                reasons[exc.reason] += 1
                continue
            except InvalidEvent as exc:
                error = str(exc)
                dead.append((position, dead_letter_headers(message, kind, version, "invalid_event", error)))
                reasons["invalid_event"] += 1
                continue
            valid.append(ConsentAuditRecord(event, message.topic, message.partition, message.offset))
        self.guard.observe(kind, len(messages), len(dead))  # may raise: nothing applied, nothing acked
        dropped_before = self.ledger.periods_dropped
        changed: dict[str, LedgerUpdate] = {}
        for record in valid:
            previous = self.ledger.find(record.event.consent_id, record.event.user_id)
            updated = self.ledger.apply(record.event, record.source_offset)
            # unchanged: a record read again, or a claim on another user's or purpose's consent id
            # (its partition is not the owner's: it must not write the owner's table entry)
            if updated is not previous:
                update = LedgerUpdate(record.source_partition, updated, record.source_offset)
                changed[updated.consent_id] = update
        if self.ledger.periods_dropped > dropped_before:
            metrics.CONSENT_PERIODS_DROPPED.inc(self.ledger.periods_dropped - dropped_before)
        metrics.CONSENT_LEDGER_SIZE.set(len(self.ledger))
        return DecidedConsents(len(messages), valid, list(changed.values()), Routes([], [], dead), reasons)

    async def write(self, decided: DecidedConsents) -> BatchResult:
        result = decided.result(*await self.sink.write_consents(decided.records))
        metrics.RECORDS_CONSUMED.labels(self.kind).inc(decided.consumed)
        for reason, count in decided.reasons.items():
            metrics.DEAD_LETTERS.labels(self.kind, reason).inc(count)
        actions = Counter(record.event.action for record in decided.records)
        for action, count in actions.items():
            metrics.CONSENTS.labels(action).inc(count)
        return result
