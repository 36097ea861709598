"""What flows between the pipeline's steps: records in, records out, and a batch's outcome.

Plain immutable values with no behaviour, so every step (and the second process, through the pipe)
can share them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from flowaudit.domain.ledger import LedgerUpdate

# Kafka record headers, in order (a name may repeat)
Headers = list[tuple[str, bytes]]


class InboundMessage(NamedTuple):
    """One record read from an input topic, as the agent hands it to the pipeline."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


class OutboundRecord(NamedTuple):
    """One record to publish: the original value, with the key and headers the route gave it."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    partition_hint: int  # the input partition: the publisher maps it onto the output topic's partitions


@dataclass
class BatchResult:
    """What became of one batch once it is durable (the agent's observer and `flowaudit demo` read it)."""

    consumed: int = 0
    allowed: int = 0
    blocked: int = 0
    dead_lettered: int = 0
    written: int = 0
    replayed: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    # a consent batch: the ledger's records it changed, for the worker's Faust table (changelog)
    ledger_updates: tuple[LedgerUpdate, ...] = ()
    # a flow batch: the latest signed checkpoint of each chain it wrote to (sinks/merkle_log.py), to
    # publish on the checkpoints topic before the batch is acknowledged
    checkpoints: tuple[str, ...] = ()
