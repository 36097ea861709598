"""Test doubles for the pipeline's ports (never used by production code)."""

from __future__ import annotations

from collections.abc import Sequence

from flowaudit.sinks.audit import AuditRecord
from flowaudit.sinks.clickhouse import StoreError
from flowaudit.sinks.consents import ConsentAuditRecord
from flowaudit.streams.messages import OutboundRecord


class MemorySink:
    """An in-memory audit sink for tests: keeps records, can be told to fail a number of times."""

    def __init__(self, failures: int = 0) -> None:
        self.records: list[AuditRecord] = []
        self.consents: list[ConsentAuditRecord] = []
        self.failures = failures
        self._seen: set[str] = set()  # event ids: the idempotency key, as in the real store

    async def write(self, records: Sequence[AuditRecord]) -> tuple[int, int]:
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("memory sink told to fail")
        written = replayed = 0
        for record in records:
            key = record.event.event_id
            if key in self._seen:
                replayed += 1
                continue
            self._seen.add(key)
            self.records.append(record)
            written += 1
        return written, replayed

    def latest_checkpoints(self, chains: Sequence[str]) -> list[str]:
        return []

    async def write_consents(self, records: Sequence[ConsentAuditRecord]) -> tuple[int, int]:
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("memory sink told to fail")
        fresh = [record for record in records if record.event.event_id not in self._seen]
        self._seen.update(record.event.event_id for record in fresh)
        self.consents.extend(fresh)
        return len(fresh), len(records) - len(fresh)


class FakePublisher:
    """A publisher for tests: keeps what it is given, by topic; every publish succeeds at once."""

    def __init__(self) -> None:
        self.sent: dict[str, list[OutboundRecord]] = {}

    async def publish(self, topic: str, records: Sequence[OutboundRecord]) -> None:
        self.sent.setdefault(topic, []).extend(records)
