"""Bad records as a first-class outcome: the dead-letter headers, and the limit on how many there may be.

An invalid record (it cannot be decoded, or it breaks the event contract) never stops its batch: it
goes to the dead-letter topic with its original bytes and the headers below, which say why and where
it came from. `InvalidRatioGuard` is the limit: when most records of a window are invalid (a bad deploy
of a producer, a wrong schema), it raises instead of dead-lettering everything, and the worker stops.
"""

from __future__ import annotations

import logging
from collections import deque

from flowaudit.common import metrics
from flowaudit.streams.messages import Headers, InboundMessage

log = logging.getLogger(__name__)

# longest `flowaudit-error` header, in bytes: a record's error must not make a record of its own too big
MAX_ERROR_BYTES = 2000


def dead_letter_headers(
    message: InboundMessage, kind: str, policy_version: str, reason: str, error: str
) -> Headers:
    """The headers of a dead letter: reason, error text, origin (topic, partition, offset), kind, policy.

    `reason` is one of a closed set (`bad_magic`, `unknown_schema`, `wrong_kind`, `corrupt_body`,
    `invalid_event`), so it can label metrics; `error` is free text, cut to MAX_ERROR_BYTES.
    """
    log.info("dead letter from %s/%d@%d: %s", message.topic, message.partition, message.offset, error)
    return [
        ("flowaudit-error-reason", reason.encode()),
        ("flowaudit-error", error.encode()[:MAX_ERROR_BYTES]),
        ("flowaudit-source-topic", message.topic.encode()),
        ("flowaudit-source-partition", str(message.partition).encode()),
        ("flowaudit-source-offset", str(message.offset).encode()),
        ("flowaudit-event-kind", kind.encode()),
        ("flowaudit-policy-version", policy_version.encode()),
    ]


class InvalidRatioExceeded(RuntimeError):
    """Too many invalid records in a window: stop instead of dead-lettering everything."""


class InvalidRatioGuard:
    """Tracks the share of invalid records over the last `window` records of one kind.

    `observe` is called once per batch, after the batch is decided and before anything of it is
    written or forwarded; it raises InvalidRatioExceeded when the limit is passed, so the batch that
    tripped it stays unacknowledged in Kafka. Not thread-safe: one guard per kind, used by one loop.
    """

    def __init__(self, limit: float, window: int) -> None:
        self.limit = limit
        self.window = window
        self._batches: deque[tuple[int, int]] = deque()
        self._total = 0
        self._invalid = 0

    def observe(self, kind: str, total: int, invalid: int) -> float:
        """Count a batch of `total` records, `invalid` of them invalid; return the ratio over the window."""
        self._batches.append((total, invalid))
        self._total += total
        self._invalid += invalid
        while self._batches and self._total - self._batches[0][0] >= self.window:
            old_total, old_invalid = self._batches.popleft()
            self._total -= old_total
            self._invalid -= old_invalid
        ratio = self._invalid / self._total if self._total else 0.0
        metrics.INVALID_RATIO.labels(kind).set(ratio)
        # Before a full window has been seen, stop as soon as the invalid records alone exceed the
        # limit's share of a window: at most `limit * window` dead letters leak out of a bad deploy.
        if self._total >= self.window:
            exceeded = ratio > self.limit
        else:
            exceeded = self._invalid > self.limit * self.window
        if exceeded:
            raise InvalidRatioExceeded(
                f"{self._invalid} of the last {self._total} {kind} records are invalid "
                f"({ratio:.0%} > limit {self.limit:.0%}); stopping rather than dead-lettering them all. "
                "Fix the producer (or raise FLOWAUDIT_INVALID_RATIO_LIMIT) and restart: the records "
                "are still in Kafka and will be read again."
            )
        return ratio
