"""Route: where each record of a decided batch goes, and putting it there.

An allowed event goes to the approved topic, a blocked one (any rule fired) to the blocked topic, both
as the original record under the event id with the decision in the `flowaudit-decision` header; an
invalid record goes to the dead-letter topic with its original key, value and dead-letter headers.
The decide step fills the `Routes` of a batch (by index, without payloads); `forward` turns them into
publishes against the batch's messages, in the process that holds the payloads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import orjson

from flowaudit.common import metrics
from flowaudit.domain.decision import Decision
from flowaudit.streams.messages import BatchResult, Headers, InboundMessage, OutboundRecord

DECISION_HEADER = "flowaudit-decision"

# (index of the record in its batch, key to publish under, `flowaudit-decision` header)
Forward = tuple[int, bytes, bytes]


class Routes(NamedTuple):
    """Where each record of a batch goes, by its index in the batch.

    Payloads stay with the caller: when the pipeline runs in a second process, only this crosses back
    (a few hundred bytes per record, ~0.2 µs to pickle and unpickle instead of ~2.5 µs for records).
    """

    approved: list[Forward]
    blocked: list[Forward]
    dead: list[tuple[int, Headers]]


@dataclass(frozen=True)
class Topics:
    """The gate's output topics."""

    approved: str
    blocked: str
    dead_letter: str
    checkpoints: str | None = None  # the signed checkpoints' topic (None: not published)


class Publisher(Protocol):
    async def publish(self, topic: str, records: Sequence[OutboundRecord]) -> None:
        """Send the records and return once the broker has acknowledged all of them."""


class DecisionHeaders:
    """Encodes the `flowaudit-decision` header: the decision as JSON (schemas/headers/decision.v2.avsc),
    its keys in the order of the `flowaudit evaluate` object (contract v2 §7) after `event_id` and
    `decided_at`.

    Called once per decided event, in the decide loop. All but the event id, the time and the
    counterparty repeat across events, so the middle (decision to waivers) is encoded once per
    distinct decision and kept (up to 4096 of them); the counterparty (a sharing's recipient is free
    text, too many to cache against) is encoded per event, and the policy version closes the object.
    """

    MAX_CACHED = 4096

    def __init__(self) -> None:
        self._middles: dict[tuple[object, ...], tuple[bytes, bytes]] = {}

    def encode(self, decision: Decision, decided_at_ms: int) -> bytes:
        key = (
            decision.decision,
            decision.data_categories,
            decision.legal_basis,
            decision.rules,
            decision.special_category_condition,
            decision.transfer_mechanism,
            decision.flags,
            decision.waived,
            decision.policy_version,
        )
        cached = self._middles.get(key)
        if cached is None:
            middle = orjson.dumps(
                {
                    "decision": decision.decision,
                    "data_categories": decision.data_categories,
                    "legal_basis": decision.legal_basis,
                    "rules": decision.rules,
                    "special_category_condition": decision.special_category_condition,
                    "transfer_mechanism": decision.transfer_mechanism,
                    "flags": decision.flags,
                    "waived": decision.waived,
                }
            )[1:-1]
            cached = (middle, orjson.dumps(decision.policy_version))
            if len(self._middles) >= self.MAX_CACHED:
                self._middles.clear()
            self._middles[key] = cached
        return b'{"event_id":"%s","decided_at":%d,%b,"counterparty":%b,"policy_version":%b}' % (
            decision.event_id.encode(),
            decided_at_ms,
            cached[0],
            orjson.dumps(decision.counterparty),
            cached[1],
        )


def forward(
    publisher: Publisher, topics: Topics, messages: Sequence[InboundMessage], routes: Routes
) -> list[Awaitable[None]]:
    """The publishes that put a batch's records on the gate's topics and the dead-letter topic.

    `messages` is the batch the routes were made for (indices refer to it). Nothing is sent until the
    returned awaitables are awaited; each returns once the broker has acknowledged its records.
    """

    def decided(forwards: list[Forward]) -> list[OutboundRecord]:
        return [
            OutboundRecord(key, messages[i].value, [(DECISION_HEADER, header)], messages[i].partition)
            for i, key, header in forwards
        ]

    dead = [
        OutboundRecord(messages[i].key, messages[i].value, headers, messages[i].partition)
        for i, headers in routes.dead
    ]
    return [
        publisher.publish(topic, items)
        for topic, items in (
            (topics.approved, decided(routes.approved)),
            (topics.blocked, decided(routes.blocked)),
            (topics.dead_letter, dead),
        )
        if items
    ]


async def forward_while_writing(
    publisher: Publisher,
    topics: Topics,
    messages: Sequence[InboundMessage],
    routes: Routes,
    written: Awaitable[BatchResult],
) -> BatchResult:
    """Forward a decided batch while its audit rows are written; return its result once both are durable.

    Raises the first failure of either (the batch must then not be acknowledged); a later failure of
    the other is retrieved, not left unreported. Counts the forwarded events.
    """
    writing = asyncio.ensure_future(written)
    await asyncio.gather(writing, *forward(publisher, topics, messages, routes))
    result = writing.result()
    _count_forwarded(result)
    return result


def checkpoint_records(notes: Sequence[str]) -> list[OutboundRecord]:
    """A signed checkpoint per record, keyed by its origin (`<log name>/<topic>/<partition>`) and
    sent to the partition of its chain's partition number, so one chain's checkpoints keep their
    order on the topic (the witness still accepts an older one arriving late: `stale`)."""
    records = []
    for note in notes:
        origin = note.split("\n", 1)[0]
        partition = origin.rsplit("/", 1)[-1]
        hint = int(partition) if partition.isdigit() else 0
        records.append(OutboundRecord(origin.encode(), note.encode(), [], hint))
    return records


async def publish_checkpoints(publisher: Publisher, topics: Topics, result: BatchResult) -> None:
    """Publish a durable batch's checkpoints; returns once the broker has them (before the ack)."""
    if result.checkpoints and topics.checkpoints:
        await publisher.publish(topics.checkpoints, checkpoint_records(result.checkpoints))
        metrics.CHECKPOINTS_PUBLISHED.inc(len(result.checkpoints))


def _count_forwarded(result: BatchResult) -> None:
    """The forwarding metrics, kept by the process that forwards (the worker's)."""
    if result.allowed:
        metrics.FORWARDED.labels("approved").inc(result.allowed)
    if result.blocked:
        metrics.FORWARDED.labels("blocked").inc(result.blocked)
