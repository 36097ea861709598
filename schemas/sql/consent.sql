-- The consent ledger's rows (contract v2 §6) and the withdrawal notices (Art. 17(2), 19).
-- Applied idempotently at start-up by the worker after audit.sql (every statement IF NOT EXISTS).
-- Neither table is part of the hash chain (`flowaudit verify` does not read them): both are
-- append-only, the writer has no UPDATE/DELETE/ALTER on them (schemas/sql/roles.sql).
--
-- consent_events: one row per consent event, known by event_id (a re-delivered event is not written
-- again: sinks/consents.py). Ordered by (user_id, consent_id, occurred_at) because every reader asks
-- about one subject's consents; the bloom filter keeps the writer's lookup by event id a few reads.
CREATE TABLE IF NOT EXISTS consent_events
(
    event_id         UUID,
    occurred_at      DateTime64(3, 'UTC'),
    user_id          String,
    consent_id       String,
    purpose          LowCardinality(String),
    action           Enum8('granted' = 1, 'withdrawn' = 2),
    notice_version   Nullable(String),
    source_topic     LowCardinality(String),
    source_partition UInt32,
    source_offset    UInt64,
    ingested_at      DateTime64(3, 'UTC'),
    policy_version   LowCardinality(String),
    INDEX idx_event_id event_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ingested_at)
ORDER BY (user_id, consent_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- consent_withdrawal_notices: written when a withdrawal is written, by one INSERT ... SELECT from
-- audit_events (sinks/consents.py): the allowed flows that cited the consent before it was withdrawn,
-- and their recipients (the registry's canonical name where the row has one). What the store knew
-- at that moment: flows written later are in the report consent-withdrawals, which is complete.
CREATE TABLE IF NOT EXISTS consent_withdrawal_notices
(
    withdrawal_event_id UUID,
    consent_id          String,
    user_id             String,
    purpose             LowCardinality(String),
    withdrawn_at        DateTime64(3, 'UTC'),
    flow_event_id       UUID,
    flow_occurred_at    DateTime64(3, 'UTC'),
    counterparty_type   LowCardinality(String),
    counterparty        Nullable(String),
    destination_country LowCardinality(String),
    data_categories     Array(LowCardinality(String)),
    recorded_at         DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (user_id, consent_id, withdrawal_event_id, flow_event_id);
