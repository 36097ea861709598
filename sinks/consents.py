"""Consent rows and withdrawal notices in the audit store (contract v2 §6; GDPR Art. 17(2), 19).

The stream side hands `ClickHouseSink.write_consents` a batch of `ConsentAuditRecord`s (a validated
`ConsentEvent` and where it was read from). The store (`AuditStore.write_consents`, the blocking
equivalent) guarantees, when it returns:

- every record's event id has a row in `consent_events` (append-only, schemas/sql/consent.sql);
  records whose event id the table already held, or that repeat one earlier in the batch, are not
  written again and are counted as already present: the result is (rows written, already present);
- for every `withdrawn` record of the batch (written now or before: a re-delivery after a crash
  between the two steps must still leave the notices), `consent_withdrawal_notices` holds one row per
  allowed flow of `audit_events` that cited the consent, of the same user, before the withdrawal,
  with its recipient: one INSERT ... SELECT inside ClickHouse, which skips the flows the withdrawal
  already has a notice for, so a re-delivered withdrawal duplicates nothing.

The notices are what the store knew when the withdrawal was written: a flow written later (topics
are not ordered among themselves) is not in them; the report `consent-withdrawals` computes the
recipients at query time and is complete.

Pure here (rows, token, SQL); the I/O is `AuditStore`'s (sinks/clickhouse.py), on the store thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from flowaudit.domain.consent import ConsentEvent

CONSENT_TABLE = "consent_events"
NOTICE_TABLE = "consent_withdrawal_notices"
CONSENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "occurred_at",
    "user_id",
    "consent_id",
    "purpose",
    "action",
    "notice_version",
    "source_topic",
    "source_partition",
    "source_offset",
    "ingested_at",
    "policy_version",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Unqualified table names: `qualify` points them at the store's database. Recipient: the registry's
# canonical name (counterparty_name) where the row has one, else the counterparty as sent (rows
# written before row format 2). Only allowed flows: a blocked flow disclosed nothing. Every column of
# audit_events is named through `f.`: in ClickHouse an alias of the SELECT list (user_id, consent_id
# here) is visible in WHERE and would shadow the column of the same name (WHERE 'alice' = 'alice').
NOTICES_SQL = """INSERT INTO consent_withdrawal_notices
SELECT
    ws.w_withdrawal AS n_withdrawal,
    ws.w_consent AS n_consent,
    ws.w_user AS n_user,
    ws.w_purpose AS n_purpose,
    ws.w_at AS n_withdrawn_at,
    f.event_id AS n_flow,
    f.occurred_at AS n_flow_at,
    f.counterparty_type AS n_counterparty_type,
    coalesce(f.counterparty_name, trimBoth(f.counterparty)) AS n_counterparty,
    f.destination_country AS n_destination,
    f.data_categories AS n_categories,
    fromUnixTimestamp64Milli({recorded_at:Int64}, 'UTC') AS n_recorded_at
FROM audit_events AS f
INNER JOIN (
    SELECT
        toUUID(tupleElement(w, 1)) AS w_withdrawal,
        tupleElement(w, 2) AS w_consent,
        tupleElement(w, 3) AS w_user,
        tupleElement(w, 4) AS w_purpose,
        fromUnixTimestamp64Milli(tupleElement(w, 5), 'UTC') AS w_at
    FROM (
        SELECT arrayJoin(arrayZip({withdrawals:Array(String)}, {consents:Array(String)},
                                  {users:Array(String)}, {purposes:Array(String)},
                                  {withdrawn_at:Array(Int64)})) AS w
    )
) AS ws ON f.user_id = ws.w_user AND f.consent_id = ws.w_consent
WHERE f.user_id IN (SELECT arrayJoin({users:Array(String)}))
  AND f.occurred_at < ws.w_at
  AND f.decision = 'allowed'
  AND (ws.w_withdrawal, f.event_id) NOT IN (
      SELECT withdrawal_event_id, flow_event_id FROM consent_withdrawal_notices
      WHERE withdrawal_event_id IN (SELECT toUUID(arrayJoin({withdrawals:Array(String)})))
  )"""


class ConsentAuditRecord(NamedTuple):
    """One consent event and where it was read from: what the stream hands to the sink."""

    event: ConsentEvent
    source_topic: str
    source_partition: int
    source_offset: int


@dataclass
class ConsentBatch:
    """Consent rows ready to insert: identical rows and token on every retry."""

    rows: list[tuple[Any, ...]]
    token: str
    present: int  # records not written: their event id is held already (or repeats in the batch)
    withdrawals: list[ConsentEvent] = field(default_factory=list)  # every withdrawal of the batch

    @property
    def written(self) -> int:
        return len(self.rows)


def moment(ms: int) -> datetime:
    """Epoch milliseconds -> an aware UTC datetime, exactly (no float rounding)."""
    return _EPOCH + timedelta(milliseconds=ms)


def consent_row(record: ConsentAuditRecord, ingested_at_ms: int, policy_version: str) -> tuple[Any, ...]:
    """The row of `consent_events` for a record, in CONSENT_COLUMNS order."""
    event = record.event
    return (
        event.event_id,
        moment(event.occurred_at_ms),
        event.user_id,
        event.consent_id,
        event.purpose,
        event.action,
        event.notice_version,
        record.source_topic,
        record.source_partition,
        record.source_offset,
        moment(ingested_at_ms),
        policy_version,
    )


def build_consent_batch(
    records: Sequence[ConsentAuditRecord],
    held: Collection[str],
    ingested_at_ms: int,
    policy_version: str,
) -> ConsentBatch:
    """The rows of the records whose event id is not in `held` (each event id once), and every
    withdrawal of the batch (notices are idempotent, so a withdrawal held already is notified again
    harmlessly, which covers a crash between writing it and writing its notices)."""
    batch, _ = build_consent_batches([records], held, ingested_at_ms, policy_version)
    return batch


def build_consent_batches(
    requests: Sequence[Sequence[ConsentAuditRecord]],
    held: Collection[str],
    ingested_at_ms: int,
    policy_version: str,
) -> tuple[ConsentBatch, list[tuple[int, int]]]:
    """One batch for several requests (written in one insert, notified in one statement), and each
    request's (rows written, already present): a record is present when `held` has its event id or
    an earlier record of these requests had it."""
    seen: set[str] = set(held)
    rows: list[tuple[Any, ...]] = []
    withdrawals: list[ConsentEvent] = []
    counts: list[tuple[int, int]] = []
    for records in requests:
        written = 0
        for record in records:
            event = record.event
            if not event.granted and event not in withdrawals:
                withdrawals.append(event)
            if event.event_id in seen:
                continue
            seen.add(event.event_id)
            rows.append(consent_row(record, ingested_at_ms, policy_version))
            written += 1
        counts.append((written, len(records) - written))
    # the token names the rows: a retry of the same batch is dropped by ClickHouse if it had landed
    token = hashlib.sha256("|".join(sorted(str(row[0]) for row in rows)).encode()).hexdigest()
    present = sum(len(records) for records in requests) - len(rows)
    return ConsentBatch(rows, f"consent:{token}", present, withdrawals), counts


def notice_parameters(withdrawals: Sequence[ConsentEvent], recorded_at_ms: int) -> dict[str, Any]:
    """The parameters of NOTICES_SQL for the withdrawals of one batch (one statement for all: a
    statement per withdrawal cost ~16 ms each on chDB, which made consents the worker's bottleneck)."""
    return {
        "withdrawals": [withdrawal.event_id for withdrawal in withdrawals],
        "consents": [withdrawal.consent_id for withdrawal in withdrawals],
        "users": [withdrawal.user_id for withdrawal in withdrawals],
        "purposes": [withdrawal.purpose for withdrawal in withdrawals],
        "withdrawn_at": [withdrawal.occurred_at_ms for withdrawal in withdrawals],
        "recorded_at": recorded_at_ms,
    }


__all__ = [
    "CONSENT_COLUMNS",
    "CONSENT_TABLE",
    "NOTICES_SQL",
    "NOTICE_TABLE",
    "ConsentAuditRecord",
    "ConsentBatch",
    "build_consent_batch",
    "build_consent_batches",
    "consent_row",
    "notice_parameters",
]
