"""The stream's consent ledger: bounded records, the Faust table's per-user values, snapshots.

`StreamLedger` is the `ConsentLedger` the worker decides with (contract v2 §6). It is pure state:
consent events are applied in the order the worker reads them (`apply`), and a snapshot replaces the
whole state (`load`, after the Faust table was recovered from its changelog at start-up or after a
rebalance). Its records are `domain.consent.ConsentRecord`s, judged by `consent_status` as of each
flow's `occurred_at`, exactly as `flowaudit evaluate` judges them.

The durable copy of the ledger is the Faust table (keyed by `user_id`, changelogged in Kafka): its
value for one user is a JSON object `{consent_id: [purpose, [[granted_ms, withdrawn_ms | null], ...],
offset]}` (offset: of the last event applied, which makes applying a record read again a no-op).
`table_value` and `records_of` convert between that value and records. The table is keyed by user so
that it is co-partitioned with the flows (producers key every record by `user_id`).

Memory is bounded per consent: a consent id keeps at most `max_periods` grant/withdrawal periods
(the oldest are dropped, and counted: a flow older than the periods kept then reads the consent as not
in force at its time, `consent-not-valid`, which fails closed). `bench/ledger.py` measures the bytes
per consent of both copies.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flowaudit.domain.consent import ConsentEvent, ConsentRecord, next_periods

# A consent id granted and withdrawn more often than this keeps only its newest periods.
DEFAULT_MAX_PERIODS = 16

# a record and the offset of the last event applied to it (None: not known, e.g. built by a test)
Entry = tuple[ConsentRecord, int | None]


@dataclass(frozen=True, slots=True)
class LedgerUpdate:
    """One consent record as it stands after an event, and the partition of the event that changed it
    (the Faust table's changelog partition for its user)."""

    partition: int
    record: ConsentRecord
    offset: int


class StreamLedger:
    """Consent records by consent id, and the offset of the last event applied to each."""

    def __init__(self, max_periods: int = DEFAULT_MAX_PERIODS) -> None:
        if max_periods < 1:
            raise ValueError("max_periods must be at least 1")
        self.max_periods = max_periods
        self._records: dict[str, ConsentRecord] = {}
        self._offsets: dict[str, int] = {}  # consent id -> offset of the last event applied
        self.periods_dropped = 0

    def __len__(self) -> int:
        return len(self._records)

    def find(self, consent_id: str, user_id: str | None) -> ConsentRecord | None:
        # By consent id, not by user: a flow citing another user's consent must find that consent to
        # be judged `consent-not-valid` (the ledger holds the users of the partitions this worker owns).
        return self._records.get(consent_id)

    def apply(self, event: ConsentEvent, offset: int | None = None) -> ConsentRecord:
        """Record a grant or a withdrawal (as `MemoryConsentLedger.apply`: the first event of a consent
        id fixes its user and purpose; another user's or purpose's event leaves it unchanged).

        `offset`: the event's offset in its partition. A consent id's events are all on its user's
        partition, so an offset at or below the last one applied is a record read again (after a
        crash, the table already holding it): it changes nothing, and applying is idempotent."""
        record = self._records.get(event.consent_id)
        if record is None:
            # purposes are few: one string each, not one per consent
            record = ConsentRecord(event.consent_id, event.user_id, sys.intern(event.purpose), ())
        elif (record.user_id, record.purpose) != (event.user_id, event.purpose):
            return record
        if offset is not None:
            if offset <= self._offsets.get(event.consent_id, -1):
                return record
            self._offsets[event.consent_id] = offset
        periods = next_periods(record.periods, event)
        if len(periods) > self.max_periods:
            self.periods_dropped += len(periods) - self.max_periods
            periods = periods[-self.max_periods :]
        updated = ConsentRecord(record.consent_id, record.user_id, record.purpose, periods)
        self._put(updated)
        return updated

    def load(self, records: Iterable[Entry], *, replace: bool = True) -> None:
        """Put `records` (each with the offset of its last event) in the ledger: a snapshot of the
        recovered table; `replace` empties it first."""
        if replace:
            self._records.clear()
            self._offsets.clear()
        for record, offset in records:
            self._put(record)
            if offset is not None:
                self._offsets[record.consent_id] = offset

    def records_of_user(self, user_id: str) -> list[Entry]:
        """One user's records, by consent id. A scan (no per-user index: it would cost ~100 bytes per
        consent, and the worker reads a user's records from its Faust table, not from here)."""
        found = sorted(
            (r for r in self._records.values() if r.user_id == user_id), key=lambda r: r.consent_id
        )
        return [(record, self._offsets.get(record.consent_id)) for record in found]

    def records(self) -> Iterator[ConsentRecord]:
        return iter(self._records.values())

    def _put(self, record: ConsentRecord) -> None:
        self._records[record.consent_id] = record


def table_value(entries: Iterable[Entry]) -> dict[str, list[Any]]:
    """The Faust table's value for one user: `{consent_id: [purpose, periods, last offset]}`, JSON."""
    return {
        record.consent_id: [record.purpose, [list(period) for period in record.periods], offset]
        for record, offset in entries
    }


def records_of(user_id: str, value: Mapping[str, Any]) -> list[Entry]:
    """The records held in one user's table value (the inverse of `table_value`). Raises ValueError
    for a value that is not of that shape (a changelog written by something else)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"consent table value for {user_id!r} is not an object")
    entries: list[Entry] = []
    for consent_id, entry in value.items():
        try:
            purpose, raw_periods, offset = entry
            periods = tuple(
                (int(granted), None if withdrawn is None else int(withdrawn))
                for granted, withdrawn in raw_periods
            )
            last = None if offset is None else int(offset)
        except (TypeError, ValueError) as exc:
            where = f"consent table value for {user_id!r}, consent {consent_id!r}"
            raise ValueError(f"{where}: {exc}") from None
        entries.append((ConsentRecord(str(consent_id), user_id, str(purpose), periods), last))
    return entries
